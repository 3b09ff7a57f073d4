"""Where the memory ViT's accuracy comes from: its head, its memory vote, or both, regime by regime.

    python benchmarks/regimes/head_vs_vote.py --dataset pbc_blood_cells_96 --regimes 1 3 10 --seeds 0 1 2
    python benchmarks/regimes/head_vs_vote.py --pair vit_cs movit_cs --regimes 1 3   # the convolutional stem
    python benchmarks/regimes/head_vs_vote.py --dataset brain_tumor_mri_training --pair vit_cs movit_cs --regimes 3 \
        --eval-on brain_tumor_mri test   # the same networks on a shifted set (the archive's Testing folder)

For every study pair (``runs/regimes/<dataset>/{vit,movit}_r<R>_s<S>``, or the two networks ``--pair``
names) on the validation split (the
test split is left alone; ``--eval-on`` scores another split, e.g. a shifted one): the plain ViT's accuracy; the memory ViT's head alone (its softmax without
the vote), its memory vote alone (the class distribution of the memory entries its class token
attends to), and the two fused as the model outputs them (w = the trained vote weight). A head
better than the plain ViT's means training with the memory changed the representation; a fused
output better than the head alone means the read adds what the weights lack. Two properties of the
vote say how much it leaves the head to learn: its purity (mean vote probability of the image's own
label: the attention-weighted share of same-label neighbours) and its effective number of classes
(exp of the vote's entropy; 1 = one class among the neighbours).
Writes ``benchmarks/results/head_vs_vote_<dataset>.md`` (``..._<plain>_<memory>.md`` for another pair,
``..._on_<dataset>_<split>.md`` with ``--eval-on``).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import mean_std  # noqa: E402
from run_regimes import DATASETS, REPO, build, load_arrays, require_data_root  # noqa: E402
from write_bound import accuracy  # noqa: E402
from write_vs_train import evaluate  # noqa: E402

COLUMNS = "plain ViT | memory ViT head | memory ViT vote | memory ViT fused | vote purity | vote classes"
N_VALUES = COLUMNS.count("|") + 1


def vote_spread(vote: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean purity (the vote's probability of the true label) and mean effective number of classes
    (exp of the vote's entropy) of votes (N, C) for labels (N,)."""
    purity = vote.gather(1, labels[:, None].long()).mean()
    entropy = -(vote * vote.clamp(min=1e-12).log()).sum(1)
    return float(purity), float(entropy.exp().mean())


def trained_pairs(root: str, dataset: str, pair: list[str], regimes: list[int], seeds: list[int]):
    """Yield (regime, seed, {network: run dir}) for every cell where both networks of ``pair`` were trained."""
    for regime in regimes:
        for seed in seeds:
            runs = {n: Path(root) / dataset / f"{n}_r{regime}_s{seed}" for n in pair}
            if all((r / "models" / "model_full.pt").exists() for r in runs.values()):
                yield regime, seed, runs
            else:
                print(f"skip regime {regime} seed {seed}: a trained run is missing", file=sys.stderr)


def load(dataset: str, network: str, run_dir: Path, num_classes: int):
    net = build(dataset, network, num_classes)
    net.load_state_dict(torch.load(run_dir / "models" / "model_full.pt", map_location="cpu", weights_only=True))
    return net.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="pbc_blood_cells_96", choices=sorted(DATASETS))
    p.add_argument("--regimes", nargs="+", type=int, default=[1, 3, 10])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--root", default=str(REPO / "runs" / "regimes"))
    p.add_argument("--pair", nargs=2, default=["vit", "movit"], metavar=("PLAIN", "MEMORY"), help="driver model names of the two networks")
    p.add_argument("--eval-on", nargs=2, metavar=("DATASET", "SPLIT"), help="score another manifest's split with the same classes "
                   "(default: the training dataset's validation split; a test split is read only by this diagnosis, never for selection)")
    args = p.parse_args()
    plain_name, memory_name = args.pair
    require_data_root()
    import medmem
    from medmem.atomic import write_text_atomic
    from medmem.memory.vote import fused, head_and_vote

    classes = medmem.data.load_manifest(medmem.engine.resolve_manifest(args.dataset))["classes"]
    c = len(classes)
    cfg = DATASETS[args.dataset]
    eval_dataset, eval_split = args.eval_on or (args.dataset, "validation")
    if medmem.data.load_manifest(medmem.engine.resolve_manifest(eval_dataset))["classes"] != classes:
        sys.exit(f"--eval-on {eval_dataset}: its classes differ from {args.dataset}'s {classes}")
    x, y = load_arrays(eval_dataset, eval_split, None, cfg["image_size"], cfg["in_channels"])
    y = torch.as_tensor(y)
    default_pair = args.pair == ["vit", "movit"]
    pair_flag = ("" if default_pair else f" --pair {plain_name} {memory_name}") + (f" --eval-on {eval_dataset} {eval_split}" if args.eval_on else "")
    scored = f"{eval_dataset} {eval_split} split" if args.eval_on else "validation split"
    rows, by_regime = [], {}
    for regime, seed, runs in trained_pairs(args.root, args.dataset, args.pair, args.regimes, args.seeds):
        vit_acc = evaluate(load(args.dataset, plain_name, runs[plain_name], c), x, y.numpy(), c)["acc"]
        movit = load(args.dataset, memory_name, runs[memory_name], c)
        head, vote = head_and_vote(movit, x)
        row = [vit_acc, accuracy(head, y), accuracy(vote, y), accuracy(fused(head, vote, movit.memory_vote), y), *vote_spread(vote, y)]
        rows.append(f"| {regime} | {seed} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
        by_regime.setdefault(regime, []).append(row)
        print(rows[-1], flush=True)
    lines = [
        f"# Head or memory vote? ({args.dataset}, {scored})",
        "",
        f"Made by `python benchmarks/regimes/head_vs_vote.py --dataset {args.dataset}{pair_flag} --regimes {' '.join(map(str, args.regimes))} "
        f"--seeds {' '.join(map(str, args.seeds))}` (machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}),",
        f"on the study's trained networks; {scored} ACC over {len(y)} images. `memory ViT head`: its softmax without the vote;",
        "`vote`: the memory entries' labels as its class token weighs them; `fused`: the model's output.",
        f"`vote purity`: mean vote probability of the image's own label; `vote classes`: mean exp(entropy) of the vote ({c} classes).",
        f"Plain ViT: driver model `{plain_name}`; memory ViT: `{memory_name}`.",
        "",
        f"| regime % | seed | {COLUMNS} |",
        "|---|---|" + "---|" * N_VALUES,
        *rows,
        "",
        "Mean ± standard deviation over seeds:",
        "",
        f"| regime % | n | {COLUMNS} |",
        "|---|---|" + "---|" * N_VALUES,
    ]
    for regime, values in by_regime.items():
        cols = [mean_std([v[i] for v in values]) for i in range(N_VALUES)]
        lines.append(f"| {regime} | {len(values)} | " + " | ".join(cols) + " |")
    suffix = ("" if default_pair else f"_{plain_name}_{memory_name}") + (f"_on_{eval_dataset}_{eval_split}" if args.eval_on else "")
    out = REPO / "benchmarks" / "results" / f"head_vs_vote_{args.dataset}{suffix}.md"
    write_text_atomic("\n".join(lines) + "\n", out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
