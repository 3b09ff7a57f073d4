"""Can the memory use the scans nobody labelled? Write the rest of the training split into a trained
memory ViT's memory, with and without labels, and score the test split.

    python benchmarks/regimes/unlabelled_memory.py --dataset pbc_blood_cells_96 --network movit_cs --regime 3 --seeds 0 1 2

A site that labelled a few percent of its scans usually holds the rest unlabelled. For each trained
``runs/regimes/<dataset>/<network>_r<R>_s<S>``, the training cases outside regime R are written into a
fresh copy of its memory (no gradient step) in four ways:

- ``labelled``: with their true labels (the upper reference: what labelling them all would give the memory);
- ``unknown``: with no label (-1): only their keys and values, which the memory vote skips;
- ``pseudo``: with the network's own predicted label (label propagation through the memory);
- ``pseudo, p >= 0.9``: only the cases it predicts with probability at least 0.9, with that label.

Test ACC / AUC of each against the network as trained. Writes
``benchmarks/results/unlabelled_memory_<dataset>_<network>.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from head_vs_vote import load  # noqa: E402
from run_regimes import DATASETS, NETWORKS, REPO, load_arrays, probabilities, require_data_root  # noqa: E402
from write_vs_train import evaluate  # noqa: E402

CONFIDENT = 0.9
WAYS = ("labelled", "unknown", "pseudo", f"pseudo, p >= {CONFIDENT:g}")


def write_rest(net, x: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor) -> None:
    """Write images (N, C, H, W) with sample ids and labels (N,) (-1 = unknown) into ``net``'s memory."""
    for i in range(0, len(x), 256):
        net.write_memory(x[i : i + 256], ids[i : i + 256], labels[i : i + 256])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="pbc_blood_cells_96", choices=sorted(DATASETS))
    p.add_argument("--network", default="movit_cs", choices=[n for n, o in NETWORKS.items() if o["memory_mode"] == "full"])
    p.add_argument("--regime", type=int, default=3)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--root", default=str(REPO / "runs" / "regimes"))
    args = p.parse_args()
    require_data_root()
    import medmem
    from medmem.atomic import write_text_atomic

    manifest = medmem.engine.resolve_manifest(args.dataset)
    c = len(medmem.data.load_manifest(manifest)["classes"])
    cfg = DATASETS[args.dataset]
    xte, yte = load_arrays(args.dataset, "test", None, cfg["image_size"], cfg["in_channels"])
    items = medmem.data.load_datalist(manifest, "training", None)
    chain = medmem.data.eval_transforms(cfg["image_size"], cfg["in_channels"])
    ids = torch.tensor([d["sample_id"] for d in items])
    truth = torch.tensor([d["label"] for d in items])
    images = None  # decoded once, on the first run found
    rows, deltas = [], {}
    for seed in args.seeds:
        run = Path(args.root) / args.dataset / f"{args.network}_r{args.regime}_s{seed}"
        if not (run / "models" / "model_full.pt").exists():
            print(f"skip seed {seed}: {run} is not trained", file=sys.stderr)
            continue
        if images is None:
            images = torch.stack([chain({"image": d["image"]})["image"] for d in items])
        trained = load(args.dataset, args.network, run, c)
        held = set(trained.memory_layers()[0].memory.sample_ids().tolist())
        rest = torch.tensor([i for i, s in enumerate(ids.tolist()) if s not in held])
        base = evaluate(trained, xte, yte, c)
        confidence, guess = probabilities(trained, images[rest]).max(-1)
        confident = confidence >= CONFIDENT
        choices = {
            WAYS[0]: (rest, truth[rest]),
            WAYS[1]: (rest, torch.full((len(rest),), -1)),
            WAYS[2]: (rest, guess),
            WAYS[3]: (rest[confident], guess[confident]),
        }
        for way, (index, labels) in choices.items():
            net = load(args.dataset, args.network, run, c)  # a fresh memory for each way
            write_rest(net, images[index], ids[index], labels)
            m = evaluate(net, xte, yte, c)
            known = labels >= 0
            label_acc = float((labels[known] == truth[index][known]).float().mean()) if known.any() else float("nan")
            deltas.setdefault(way, []).append((m["acc"] - base["acc"], m["auc"] - base["auc"]))
            rows.append(
                f"| {seed} | {way} | {len(index)} | {label_acc:.3f} | {base['acc']:.3f} / {base['auc']:.3f} | {m['acc']:.3f} / {m['auc']:.3f} | "
                f"{100 * (m['acc'] - base['acc']):+.1f} |"
            )
            print(rows[-1], flush=True)
    mean = lambda values: f"{100 * statistics.mean(values):+.1f}"  # noqa: E731
    lines = [
        f"# Writing the unlabelled rest of the training split into the memory ({args.dataset}, {args.network}, {args.regime}%)",
        "",
        f"Made by `python benchmarks/regimes/unlabelled_memory.py --dataset {args.dataset} --network {args.network} --regime {args.regime} "
        f"--seeds {' '.join(map(str, args.seeds))}` (machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}),",
        f"on the study's trained networks; test split, {len(yte)} images. `written`: training cases outside the regime written into the memory;",
        "`label ACC`: share of the written labels that are right (nan: written without labels). No gradient step anywhere.",
        "",
        "| seed | written as | written | label ACC | trained ACC / AUC | after writing ACC / AUC | ACC change, points |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Mean change over seeds, points:",
        "",
        "| written as | seeds | ACC | AUC |",
        "|---|---|---|---|",
        *(f"| {way} | {len(d)} | {mean([a for a, _ in d])} | {mean([u for _, u in d])} |" for way, d in deltas.items()),
    ]
    out = REPO / "benchmarks" / "results" / f"unlabelled_memory_{args.dataset}_{args.network}.md"
    write_text_atomic("\n".join(lines) + "\n", out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
