"""Does the neighbour readout (session 13's design) use its neighbours at test time, and is it better for it?

    python benchmarks/regimes/readout_use.py --cells pneumoniamnist:3 brain_tumor_mri_training:1 --seeds 0 1 2

For each trained study run ``movit_cs_ia_nh_r<R>_s<seed>`` (seeds whose run is missing or unfinished, or that have no
committed ``vit_cs_ia`` row, are skipped), test ACC and macro AUC of:

- ``plain``, ``k-NN``, ``memory ViT``: the committed study rows of ``vit_cs_ia`` (same backbone and recipe, linear
  readout), ``vit_cs_ia_knn`` (k-NN over its features) and ``movit_cs_ia`` (the memory read in attention plus the fused
  vote) of the same dataset, regime and seed (``-`` where not run);
- ``readout``: the network as trained (features plus what its ``k`` nearest training images say);
- ``readout off``: the same weights with the readout switched off (the classifier sees the bare features).

And how the readout reads, on the test images (means): ``added / features``, the norm of what the readout adds over the
norm of the class-token features; ``changed predictions``, the share of test images whose predicted class the readout
changes; ``true-label weight``, the attention weight its neighbours of the image's true class
carry; ``nearest-k purity``, the share of the same ``k`` neighbours with the true class found by plain cosine similarity
of the class-token features (what a k-NN classifier over this network would read). Writes ``benchmarks/results/readout_use.md``.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from head_vs_vote import load  # noqa: E402
from run_regimes import DATASETS, REPO, cell_finished, read_all_results, require_data_root  # noqa: E402
from seed_tables import markdown, tabulate  # noqa: E402
from write_vs_train import evaluate  # noqa: E402

NETWORK = "movit_cs_ia_nh"
COMMITTED = {"plain": "vit_cs_ia", "k-NN": "vit_cs_ia_knn", "memory ViT": "movit_cs_ia"}
VARIANTS = (*COMMITTED, "readout", "readout off")
READ = ("added / features", "changed predictions", "true-label weight", "nearest-k purity")


def committed(dataset: str, regime: int, seed: int) -> dict:
    """The committed test ACC/AUC of the ``COMMITTED`` models for one cell (NaN where not run)."""
    found = {(r["dataset"], r["model"], int(r["regime"]), int(r["seed"])): r for r in read_all_results()}
    out = {}
    for variant, model in COMMITTED.items():
        row = found.get((dataset, model, regime, seed))
        out[variant] = {m: float(row[m]) if row else float("nan") for m in ("acc", "auc")}
    return out


def measure(dataset: str, regime: int, seed: int, runs: Path, manifest: dict, x: torch.Tensor, y) -> dict | None:
    c = len(manifest["classes"])
    run = runs / dataset / f"{NETWORK}_r{regime}_s{seed}"
    results = committed(dataset, regime, seed)
    if not cell_finished(dataset, NETWORK, regime, seed, runs, manifest) or results["plain"]["acc"] != results["plain"]["acc"]:
        print(f"skip {dataset} r{regime} s{seed}: {run} is not trained or no committed {COMMITTED['plain']} row", file=sys.stderr)
        return None
    net = load(dataset, NETWORK, run, c)
    results["readout"] = evaluate(net, x, y, c)
    net.set_memory_mode("off")
    results["readout off"] = evaluate(net, x, y, c)
    net.set_memory_mode("full")
    results["read"] = read_stats(net, x, torch.as_tensor(y).long())
    return results


def read_stats(net, x: torch.Tensor, y: torch.Tensor) -> dict:
    readout = net.readout
    bank, labels, _ = readout.bank()
    added, changed, true_weight, purity = [], [], [], []
    with torch.no_grad():
        for i in range(0, len(x), 256):
            f, yy = net.forward_features(x[i : i + 256]), y[i : i + 256]
            weights, index, add = readout.read(f)
            added.append(add.norm(dim=-1) / f.norm(dim=-1))
            changed.append((net.classification_head(f + add).argmax(-1) != net.classification_head(f).argmax(-1)).float())
            true_weight.append((weights * (labels[index] == yy[:, None])).sum(-1))
            cos = torch.nn.functional.normalize(f, dim=-1) @ torch.nn.functional.normalize(bank, dim=-1).T
            nearest = cos.topk(min(readout.k, len(bank)), dim=-1).indices
            purity.append((labels[nearest] == yy[:, None]).float().mean(-1))
    mean = lambda parts: float(torch.cat(parts).mean())  # noqa: E731
    return {"added / features": mean(added), "changed predictions": mean(changed), "true-label weight": mean(true_weight), "nearest-k purity": mean(purity)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="+", required=True, help="dataset:regime")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--runs", default=str(REPO / "runs" / "regimes"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "readout_use.md"))
    args = p.parse_args()
    require_data_root()
    from medmem.atomic import write_text_atomic

    torch.set_num_threads(1)
    cells = []
    for cell in args.cells:
        dataset, regime = cell.split(":")
        if dataset not in DATASETS:
            sys.exit(f"{cell}: expected dataset:regime with one of {sorted(DATASETS)}")
        cells.append(([dataset, regime], dataset, {"regime": int(regime)}))
    runs = Path(args.runs)
    rows, summary = tabulate(cells, args.seeds, lambda d, seed, m, x, y, regime: measure(d, regime, seed, runs, m, x, y), VARIANTS, READ, ("readout", "plain"))
    made_by = [
        f"Made by `python benchmarks/regimes/readout_use.py --cells {' '.join(args.cells)} --seeds {' '.join(map(str, args.seeds))}`",
        f"(machine: {platform.machine()}, 2 CPU cores, torch {torch.__version__}) on the study's trained runs; test split.",
        "`plain`, `k-NN`, `memory ViT`: the committed rows of " + ", ".join(f"`{m}`" for m in COMMITTED.values()) + " for the same cell and seed;",
        f"`readout`: `{NETWORK}` as trained; `readout off`: its readout switched off.",
    ]
    text = markdown("Does the neighbour readout use its neighbours?", made_by, ["dataset", "regime %"], VARIANTS, READ, summary, rows,
                    ("readout", "plain"), "readout − plain", "Per seed (the last three columns: how the readout reads, see the script's docstring):")
    write_text_atomic(text, Path(args.out))


if __name__ == "__main__":
    main()
