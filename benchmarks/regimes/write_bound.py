"""What bounds writing instead of training? Two checks on a trained study network after ``memory add``.

    python benchmarks/regimes/write_bound.py --runs movit_r10_s0 movit_r10_s1

For each run (``runs/regimes/<dataset>/<run>``): every training case outside its regime is written into
the memory (no gradient step, as ``write_vs_train.py``), then
1. the read's k and the vote weight w are chosen together on the validation split (k in ``--ks``,
   w in 0..1) and the choice is tested once: can re-tuning the read recover more of the gap?
2. a k-NN (k = 10, cosine, distance-weighted) with every training label over the network's own output
   (class-token) features: do better neighbours exist in this representation than its memory keys find?
Writes ``benchmarks/results/write_bound.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_regimes import DATASETS, REPO, build, load_arrays, require_data_root, unit_features  # noqa: E402

WEIGHTS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0)


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float((probs.argmax(-1) == labels).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="pbc_blood_cells_96", choices=sorted(DATASETS))
    p.add_argument("--runs", nargs="+", required=True, help="study run folders of the memory ViT, e.g. movit_r10_s0")
    p.add_argument("--ks", nargs="+", type=int, default=[8, 16, 32, 64, 128])
    p.add_argument("--root", default=str(REPO / "runs" / "regimes"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "write_bound.md"))
    args = p.parse_args()
    require_data_root()
    from sklearn.neighbors import KNeighborsClassifier

    import medmem
    from medmem.atomic import write_text_atomic
    from medmem.memory.vote import fused, head_and_vote

    manifest_path = medmem.engine.resolve_manifest(args.dataset)
    c = len(medmem.data.load_manifest(manifest_path)["classes"])
    cfg = DATASETS[args.dataset]
    xtr, ytr = load_arrays(args.dataset, "training", None, cfg["image_size"], cfg["in_channels"])
    xva, yva = load_arrays(args.dataset, "validation", None, cfg["image_size"], cfg["in_channels"])
    xte, yte = load_arrays(args.dataset, "test", None, cfg["image_size"], cfg["in_channels"])
    yva_t, yte_t = torch.as_tensor(yva), torch.as_tensor(yte)
    items = medmem.data.load_datalist(manifest_path, "training", None)
    lines = [
        "# What bounds writing instead of training",
        "",
        f"Made by `python benchmarks/regimes/write_bound.py --dataset {args.dataset} --runs {' '.join(args.runs)}`",
        f"(machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}). Test ACC after writing every",
        "other training case into the run's memory. `trained k, w`: the read as trained, w re-chosen on validation",
        f"(what `medmem memory tune-vote` does); `k and w on validation`: k in {list(args.ks)} and w in {list(WEIGHTS)} chosen",
        "together on the validation split; `k-NN on output features`: k-NN (k = 10, cosine) with every training label",
        "over the same network's class-token output features.",
        "",
        "| run | trained k, w | test ACC | k and w on validation | test ACC | k-NN on output features, test ACC |",
        "|---|---|---|---|---|---|",
    ]
    for run in args.runs:
        network = run.split("_r")[0]
        net = build(args.dataset, network, c)
        net.load_state_dict(torch.load(Path(args.root) / args.dataset / run / "models" / "model_full.pt", map_location="cpu", weights_only=True))
        net.eval()
        held = set(net.memory_layers()[0].memory.sample_ids().tolist())
        rest = [i for i, d in enumerate(items) if d["sample_id"] not in held]
        for i in range(0, len(rest), 256):
            chunk = rest[i : i + 256]
            net.write_memory(xtr[chunk], torch.tensor([items[j]["sample_id"] for j in chunk]), torch.tensor([items[j]["label"] for j in chunk]))
        layer = net.memory_layers()[-1]
        trained_k = layer.k
        scores = {}  # (k, w) -> (validation ACC, test ACC)
        for k in args.ks:
            layer.k = k
            hv, vv = head_and_vote(net, xva)
            ht, vt = head_and_vote(net, xte)
            for w in WEIGHTS:
                scores[(k, w)] = (accuracy(fused(hv, vv, w), yva_t), accuracy(fused(ht, vt, w), yte_t))
        layer.k = trained_k
        at_trained = {w: s for (k, w), s in scores.items() if k == trained_k}
        w_trained = max(at_trained, key=lambda w: at_trained[w][0]) if trained_k in args.ks else None
        best = max(scores, key=lambda kw: scores[kw][0])
        knn = KNeighborsClassifier(n_neighbors=10, weights="distance", metric="cosine").fit(unit_features(net, xtr), ytr)
        knn_acc = float(np.mean(knn.predict(unit_features(net, xte)) == yte))
        trained_cell = f"{trained_k}, {w_trained} | {at_trained[w_trained][1]:.3f}" if w_trained is not None else "- | -"
        lines.append(f"| {run} | {trained_cell} | {best[0]}, {best[1]} | {scores[best][1]:.3f} | {knn_acc:.3f} |")
        print(lines[-1], flush=True)
    write_text_atomic("\n".join(lines) + "\n", Path(args.out))


if __name__ == "__main__":
    main()
