"""How many unlabelled images the study's self-training students got, and how many of their labels are right.

    python benchmarks/regimes/pseudo_label_quality.py --dataset pbc_blood_cells_96 --networks vit_cs_ssl_all5_mx_st \
        vit_cs_ssl_all5_mx_st2_steps3x vit_cs_ssl_all5_mx_stq5_steps3x --regime 3 --seeds 0 1 --sweep-teacher vit_cs_ssl_all5_mx

Reads the self-training manifests the driver made (``runs/regimes/<dataset>/pseudo_<teacher>_tta_p<t>_r<R>_s<S>.json``)
and the dataset's shipped manifest, whose true labels it compares them with (the students never read those). With
``--sweep-teacher`` it also tabulates other selections from that teacher's kept scores, no student trained. Writes
``benchmarks/results/pseudo_label_quality_<dataset>_r<R>.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_regimes import NETWORKS, REPO, pseudo_manifest_path, require_data_root  # noqa: E402

# the label smoothing the bundle trains every study network with (its default)
LABEL_SMOOTHING = json.loads((REPO / "bundles" / "movit_classification" / "configs" / "train.json").read_text())["label_smoothing"]
# the selections tabulated from one teacher's kept scores: (threshold, class quota)
SWEEP = [(0.9, None), (0.85, None), (0.7, None), (0.5, None), (0.0, 0.3), (0.0, 0.5), (0.0, 0.7), (0.0, 1.0)]


def joined_summary(derived: dict, truth: dict[str, int], unlabelled: Counter, classes: list[str]) -> tuple[int, float, str]:
    """How many unlabelled images joined ``derived``, the share labelled right and the per-class counts (true class)."""
    joined = [e for e in derived["training"] if e["pseudo_label"]]
    right = sum(e["label"] == truth[e["sha256"]] for e in joined)
    per_class = Counter(truth[e["sha256"]] for e in joined)
    shares = ", ".join(f"{classes[c]} {per_class[c]} ({per_class[c] / unlabelled[c]:.0%})" for c in range(len(classes)))
    return len(joined), right / max(1, len(joined)), shares


def selection_sweep(source: dict, args: argparse.Namespace, select) -> list[str]:
    """Rows for other selections (``SWEEP``) from the teacher's kept scores, made by ``select`` (the bundle's
    ``pseudo_labelled_manifest``), so each can be weighed before a student is trained on it."""
    import numpy as np

    truth = {e["sha256"]: e["label"] for e in source["training"]}
    ceilings: list[str] = []
    lines = [
        "",
        f"## Other selections from `{args.sweep_teacher}`'s kept scores",
        "",
        "The same scores (8 views) selected by other rules, with no student trained: `threshold t` keeps every image the "
        "teacher gives a class probability >= t; `quota q` gives each class q x its share of the labelled images x the "
        "unlabelled count places, filled by the images the teacher assigns to it most confidently "
        "(`medmem.data.pseudo_labels.class_quota_selection`). Per class: true class, as above.",
        "",
        "| seed | selection | joined | label ACC | joined per class (share of that class's unlabelled images) |",
        "|---|---|---|---|---|",
    ]
    for seed in args.seeds:
        path = Path(args.runs) / args.dataset / f"scores_{args.sweep_teacher}_tta_r{args.regime}_s{seed}.npz"
        if not path.exists():
            print(f"skipped seed {seed}: {path} not made yet", file=sys.stderr)
            continue
        with np.load(path) as saved:
            indices, probs = saved["indices"].tolist(), saved["probabilities"]
        labelled = Counter(source["training"][i]["label"] for i in source["regimes"][str(args.regime)])
        unlabelled = Counter(e["label"] for e in source["training"]) - labelled
        for threshold, quota in SWEEP:
            derived = select(source, args.regime, indices, probs, threshold, quota)
            n, acc, shares = joined_summary(derived, truth, unlabelled, source["classes"])
            rule = f"quota {quota:g}" if quota else f"threshold {threshold:g}"
            lines.append(f"| {seed} | {rule} | {n} | {acc:.3f} | {shares} |")
        ceilings.append(confidence_ceiling(seed, probs.max(axis=1), len(source["classes"])))
    return lines + ceiling_table(ceilings)


def confidence_ceiling(seed: int, top, num_classes: int) -> str:
    """A table row: how close the teacher's top class probabilities (N,) come to the top probability that the bundle's
    label smoothing e trains towards, 1 - e + e / C (a threshold near it takes few images, session 31)."""
    from medmem.engine.consistency import smoothed_top_probability

    bound = smoothed_top_probability(LABEL_SMOOTHING, num_classes)
    shares = " | ".join(f"{(top >= t).mean():.1%}" for t in (0.85, 0.9, bound, 0.95))
    return f"| {seed} | {top.max():.4f} | {shares} |"


def ceiling_table(rows: list[str]) -> list[str]:
    return ["", "Top class probability of the unlabelled images against the label-smoothing bound 1 - e + e/C (bundle label_smoothing e = "
            f"{LABEL_SMOOTHING:g}):", "", "| seed | highest | >= 0.85 | >= 0.9 | >= bound | >= 0.95 |", "|---|---|---|---|---|---|", *rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="pbc_blood_cells_96")
    p.add_argument("--networks", nargs="+", default=["vit_cs_ssl_all5_mx_st"], choices=[n for n, s in NETWORKS.items() if "teacher" in s],
                   help="students; those with the same teacher and selection share a manifest, so name one of them")
    p.add_argument("--regime", type=int, default=3)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--runs", default=str(REPO / "runs" / "regimes"))
    p.add_argument("--sweep-teacher", help="also tabulate other selections from this teacher's kept scores (scores_<teacher>_tta_r<R>_s<S>.npz)")
    args = p.parse_args()
    require_data_root()
    import medmem
    from medmem.atomic import write_text_atomic
    from medmem.data.pseudo_labels import pseudo_labelled_manifest

    source = medmem.data.load_manifest(medmem.engine.resolve_manifest(args.dataset))
    truth = {e["sha256"]: e["label"] for e in source["training"]}
    classes = source["classes"]
    lines = [
        f"# Pseudo-labels of the self-training students ({args.dataset}, {args.regime}%)",
        "",
        f"Made by `python benchmarks/regimes/pseudo_label_quality.py --dataset {args.dataset} --networks {' '.join(args.networks)} "
        f"--regime {args.regime} --seeds {' '.join(map(str, args.seeds))}"
        + (f" --sweep-teacher {args.sweep_teacher}" if args.sweep_teacher else "")
        + "` from the manifests `run_regimes.py` made "
        "(bundle pseudo_label.json's mechanism). "
        "Each teacher scored over the 8 flips and turns. "
        "`label ACC`: share of the joined images whose teacher label equals their true label (read here only).",
        "",
        "| teacher | threshold (class quota) | seed | labelled | unlabelled | joined | label ACC | joined per class (share of that class's unlabelled images) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for network, seed in ((n, s) for n in args.networks for s in args.seeds):
        settings = NETWORKS[network]
        path = pseudo_manifest_path(args.dataset, network, args.regime, seed, Path(args.runs))
        if not path.exists():
            print(f"skipped seed {seed}: {path} not made yet", file=sys.stderr)
            continue
        derived = medmem.data.load_manifest(path)
        labelled = sum(not e["pseudo_label"] for e in derived["training"])
        unlabelled = Counter(e["label"] for e in source["training"]) - Counter(e["label"] for e in derived["training"] if not e["pseudo_label"])
        n, acc, shares = joined_summary(derived, truth, unlabelled, classes)
        rule = f"{settings['pseudo_threshold']:g}" + (f", quota {settings['class_quota']:g}" if settings.get("class_quota") else "")
        lines.append(f"| `{settings['teacher']}` | {rule} | {seed} | {labelled} | {sum(unlabelled.values())} | {n} | {acc:.3f} | {shares} |")
    if args.sweep_teacher:
        lines += selection_sweep(source, args, pseudo_labelled_manifest)
    out = REPO / "benchmarks" / "results" / f"pseudo_label_quality_{args.dataset}_r{args.regime}.md"
    write_text_atomic("\n".join(lines) + "\n", out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
