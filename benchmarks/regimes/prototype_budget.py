"""Ablation: how many prototypes does the deployable model need?

    python benchmarks/regimes/prototype_budget.py --dataset pbc_blood_cells_96 --regimes 3 10 --seeds 0 1 2 \
        --budgets 32 64 128 --out benchmarks/results/ablations.csv

For every trained study network ``<network>_r<R>_s<seed>`` (``runs/regimes``), the summarise step of the
bundle (k-means prototypes, distilled, the better of the two on validation: ``choose_prototypes``) is run
with each budget P, in memory (the run's own ``model.pt`` is left alone), and the prototypes model is
evaluated once on the test split. Rows ``<network>_proto_p<P>`` go to the ablations table; the study's
``<network>_proto`` rows are P = 256 (the bundle default).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_regimes import BATCH, DATASETS, NETWORKS, REPO, STEPS, append_row, build, read_rows, require_data_root  # noqa: E402


def batches(dataset: str, split: str, regime: int | None) -> list[dict]:
    """The split as evaluation-transformed batches of ``BATCH`` dicts (image, label, sample_id), like the bundle's loaders."""
    import medmem

    cfg = DATASETS[dataset]
    items = medmem.data.load_datalist(medmem.engine.resolve_manifest(dataset), split, None, regime)
    chain = medmem.data.eval_transforms(cfg["image_size"], cfg["in_channels"])
    out = []
    for i in range(0, len(items), BATCH):
        chunk = items[i : i + BATCH]
        out.append({
            "image": torch.stack([chain({"image": d["image"]})["image"] for d in chunk]),
            "label": torch.tensor([d["label"] for d in chunk]),
            "sample_id": torch.tensor([d["sample_id"] for d in chunk]),
        })  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="pbc_blood_cells_96", choices=sorted(DATASETS))
    p.add_argument("--network", default="movit", choices=[n for n, o in NETWORKS.items() if o["memory_mode"] == "full"])
    p.add_argument("--regimes", nargs="+", type=int, default=[3, 10])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--budgets", nargs="+", type=int, default=[32, 64, 128])
    p.add_argument("--runs", default=str(REPO / "runs" / "regimes"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ablations.csv"))
    args = p.parse_args()
    require_data_root()
    import medmem
    from medmem.engine.metrics import classification_metrics
    from medmem.engine.summarize import choose_prototypes, predict_probs

    manifest = medmem.data.load_manifest(medmem.engine.resolve_manifest(args.dataset))
    c = len(manifest["classes"])
    val, test = batches(args.dataset, "validation", None), batches(args.dataset, "test", None)
    out = Path(args.out)
    for regime in args.regimes:
        for seed in args.seeds:
            checkpoint = Path(args.runs) / args.dataset / f"{args.network}_r{regime}_s{seed}" / "models" / "model_full.pt"
            if not checkpoint.exists():
                print(f"skip {checkpoint}: not trained", flush=True)
                continue
            train = batches(args.dataset, "training", regime)
            n = sum(len(b["label"]) for b in train)
            for budget in args.budgets:
                model = f"{args.network}_proto_p{budget}"
                if (args.dataset, model, str(regime), str(seed)) in {(r["dataset"], r["model"], r["regime"], r["seed"]) for r in read_rows(out)}:
                    continue
                net = build(args.dataset, args.network, c)
                net.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
                start = time.time()
                chosen = choose_prototypes(net, train, val, budget, seed=seed)
                wall = time.time() - start
                probs, labels, _ = predict_probs(net, test)
                m = classification_metrics(probs, labels, c)
                row = {
                    "dataset": args.dataset, "model": model, "regime": regime, "seed": seed, "train_images": n,
                    "epochs": math.ceil(STEPS[regime] / math.ceil(n / BATCH)), "acc": m["acc"], "auc": m["auc"], "f1": m["f1"], "wall_s": round(wall, 1),
                }  # fmt: skip
                print(row, "kept", chosen["kept"], flush=True)
                append_row(out, row)


if __name__ == "__main__":
    main()
