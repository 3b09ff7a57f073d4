"""Is the test split drawn like the training split? Per class: image statistics and a split classifier.

    python benchmarks/regimes/split_shift.py --dataset brain_tumor_mri

For every class of the shipped manifest: images per split, mean grey level (0-255) and the share of
square images, read from the files; then a logistic regression on downsampled pixels (the study's
``logreg`` input) trained to tell the class's training-split images from its test-split images
(5-fold cross-validated AUC; 0.5 = the splits look alike). Writes
``benchmarks/results/split_shift_<dataset>.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_regimes import DATASETS, REPO, require_data_root  # noqa: E402

SPLITS = ("training", "validation", "test")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="brain_tumor_mri", choices=sorted(d for d in DATASETS if d != "pneumoniamnist"), help="a dataset of image files")
    p.add_argument("--size", type=int, default=28, help="side of the downsampled pixels for the split classifier")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    require_data_root()
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    import medmem

    manifest_path = medmem.engine.resolve_manifest(args.dataset)
    manifest = medmem.data.load_manifest(manifest_path)
    classes = manifest["classes"]
    chain = medmem.data.eval_transforms(args.size, DATASETS[args.dataset]["in_channels"])
    items = {s: medmem.data.load_datalist(manifest_path, s, None) for s in SPLITS}
    lines = [
        f"# Split shift: {args.dataset}",
        "",
        f"Made by `python benchmarks/regimes/split_shift.py --dataset {args.dataset}` (machine: {platform.machine()}, {os.cpu_count()} CPU cores).",
        "Grey level: mean of the stored image (0-255). Split classifier: logistic regression on",
        f"{args.size}x{args.size} evaluation-transformed pixels telling the class's training images from its test images,",
        "5-fold cross-validated ROC AUC (0.5: the two splits look alike).",
        "",
        "| class | images train / val / test | grey level train / val / test | square share train / val / test | split classifier AUC |",
        "|---|---|---|---|---|",
    ]
    for label, name in enumerate(classes):
        per = {s: [d for d in items[s] if d["label"] == label] for s in SPLITS}
        grey, square = {}, {}
        for s in SPLITS:
            stats = []
            for d in per[s]:
                with Image.open(d["image"]) as im:
                    stats.append((float(np.asarray(im.convert("L"), dtype=np.float32).mean()), im.width == im.height))
            grey[s] = np.mean([g for g, _ in stats]) if stats else float("nan")
            square[s] = np.mean([q for _, q in stats]) if stats else float("nan")
        x = np.stack([chain({"image": d["image"]})["image"].numpy().ravel() for s in ("training", "test") for d in per[s]])
        y = np.asarray([0] * len(per["training"]) + [1] * len(per["test"]))
        auc = cross_val_score(LogisticRegression(max_iter=2000, C=0.1, class_weight="balanced"), x, y, cv=5, scoring="roc_auc")
        lines.append(
            f"| {name} | {len(per['training'])} / {len(per['validation'])} / {len(per['test'])} | "
            + " / ".join(f"{grey[s]:.1f}" for s in SPLITS) + " | " + " / ".join(f"{square[s]:.2f}" for s in SPLITS)
            + f" | {auc.mean():.3f} ± {auc.std():.3f} |"
        )  # fmt: skip
        print(lines[-1], flush=True)
    from medmem.atomic import write_text_atomic

    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"split_shift_{args.dataset}.md"
    write_text_atomic("\n".join(lines) + "\n", out)


if __name__ == "__main__":
    main()
