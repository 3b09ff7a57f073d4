"""Does the neighbour readout (session 13's design) use its neighbours at test time, and is it better for it?

    python benchmarks/regimes/readout_use.py --cells pneumoniamnist:3 brain_tumor_mri_training:1 --seeds 0 1 2

For each trained study run ``movit_cs_nh_r<R>_s<seed>`` and the plain ``vit_cs`` run of the same regime and seed
(seeds where either is missing or unfinished are skipped), test ACC and macro AUC of:

- ``plain``: the plain ViT (same backbone, linear readout);
- ``readout``: the network as trained (features plus what its ``k`` nearest training images say);
- ``readout off``: the same weights with the readout switched off (the classifier sees the bare features).

And how the readout reads, on the test images (means): ``added / features``, the norm of what the readout adds over the
norm of the class-token features; ``true-label weight``, the attention weight its neighbours of the image's true class
carry; ``nearest-k purity``, the share of the same ``k`` neighbours with the true class found by plain cosine similarity
of the class-token features (what a k-NN classifier over this network would read). Writes ``benchmarks/results/readout_use.md``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from head_vs_vote import load  # noqa: E402
from run_regimes import DATASETS, REPO, finished, load_arrays, planned_epochs, require_data_root  # noqa: E402
from write_vs_train import evaluate  # noqa: E402

NETWORK, PLAIN = "movit_cs_nh", "vit_cs"
VARIANTS = ("plain", "readout", "readout off")
READ = ("added / features", "true-label weight", "nearest-k purity")


def measure(dataset: str, regime: int, seed: int, runs: Path, manifest: dict, x: torch.Tensor, y) -> dict | None:
    c = len(manifest["classes"])
    memory_run, plain_run = (runs / dataset / f"{n}_r{regime}_s{seed}" for n in (NETWORK, PLAIN))
    if not all(finished(r, planned_epochs(manifest, n, regime)) for r, n in ((memory_run, NETWORK), (plain_run, PLAIN))):
        print(f"skip {dataset} r{regime} s{seed}: {memory_run} or {plain_run} is not trained", file=sys.stderr)
        return None
    results = {"plain": evaluate(load(dataset, PLAIN, plain_run, c), x, y, c)}
    net = load(dataset, NETWORK, memory_run, c)
    results["readout"] = evaluate(net, x, y, c)
    net.set_memory_mode("off")
    results["readout off"] = evaluate(net, x, y, c)
    net.set_memory_mode("full")
    results["read"] = read_stats(net, x, torch.as_tensor(y).long())
    return results


def read_stats(net, x: torch.Tensor, y: torch.Tensor) -> dict:
    readout = net.readout
    bank, labels, _ = readout.bank()
    added, true_weight, purity = [], [], []
    with torch.no_grad():
        for i in range(0, len(x), 256):
            f, yy = net.forward_features(x[i : i + 256]), y[i : i + 256]
            weights, index, add = readout.read(f)
            added.append(add.norm(dim=-1) / f.norm(dim=-1))
            true_weight.append((weights * (labels[index] == yy[:, None])).sum(-1))
            cos = torch.nn.functional.normalize(f, dim=-1) @ torch.nn.functional.normalize(bank, dim=-1).T
            nearest = cos.topk(min(readout.k, len(bank)), dim=-1).indices
            purity.append((labels[nearest] == yy[:, None]).float().mean(-1))
    mean = lambda parts: float(torch.cat(parts).mean())  # noqa: E731
    return {"added / features": mean(added), "true-label weight": mean(true_weight), "nearest-k purity": mean(purity)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="+", required=True, help="dataset:regime")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--runs", default=str(REPO / "runs" / "regimes"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "readout_use.md"))
    args = p.parse_args()
    require_data_root()
    import medmem
    from medmem.atomic import write_text_atomic

    torch.set_num_threads(1)
    rows, summary = [], []
    for cell in args.cells:
        dataset, regime = cell.split(":")
        if dataset not in DATASETS:
            sys.exit(f"{cell}: expected dataset:regime with one of {sorted(DATASETS)}")
        cfg = DATASETS[dataset]
        manifest = medmem.data.load_manifest(medmem.engine.resolve_manifest(dataset))
        x, y = load_arrays(dataset, "test", None, cfg["image_size"], cfg["in_channels"])
        per_seed = {}
        for seed in args.seeds:
            results = measure(dataset, int(regime), seed, Path(args.runs), manifest, x, y)
            if results is not None:
                per_seed[seed] = results
                rows.append(f"| {dataset} | {regime} | {seed} | " + " | ".join(f"{results[v]['acc']:.3f} / {results[v]['auc']:.3f}" for v in VARIANTS)
                            + " | " + " | ".join(f"{results['read'][m]:.3f}" for m in READ) + " |")  # fmt: skip
                print(rows[-1], flush=True)
        if per_seed:
            means = {v: [statistics.mean(r[v][m] for r in per_seed.values()) for m in ("acc", "auc")] for v in VARIANTS}
            summary.append(f"| {dataset} | {regime} | {len(per_seed)} | " + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in means.values())
                           + f" | {100 * (means['readout'][0] - means['plain'][0]):+.1f} |")  # fmt: skip
    header = "| dataset | regime % | {} | " + " | ".join(f"{v} ACC / AUC" for v in VARIANTS) + " |"
    lines = [
        "# Does the neighbour readout use its neighbours?",
        "",
        f"Made by `python benchmarks/regimes/readout_use.py --cells {' '.join(args.cells)} --seeds {' '.join(map(str, args.seeds))}`",
        f"(machine: {platform.machine()}, 2 CPU cores, torch {torch.__version__}) on the study's trained runs; test split.",
        f"`plain`: `{PLAIN}` of the same regime and seed; `readout`: `{NETWORK}` as trained; `readout off`: its readout switched off.",
        "",
        "Mean over seeds (last column: `readout` minus `plain`, ACC points):",
        "",
        header.format("n") + " readout − plain |",
        "|---|---|---|---|---|---|---|",
        *summary,
        "",
        "Per seed (the last three columns: how the readout reads, see the script's docstring):",
        "",
        header.format("seed") + " " + " | ".join(READ) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(READ),
        *rows,
    ]
    write_text_atomic("\n".join(lines) + "\n", Path(args.out))


if __name__ == "__main__":
    main()
