"""How many unlabelled images the study's self-training students got, and how many of their labels are right.

    python benchmarks/regimes/pseudo_label_quality.py --dataset pbc_blood_cells_96 --networks vit_cs_ssl_all5_mx_st \
        vit_cs_ssl_all5_mx_st2_steps3x --regime 3 --seeds 0 1

Reads the self-training manifests the driver made (``runs/regimes/<dataset>/pseudo_<teacher>_tta_p<t>_r<R>_s<S>.json``)
and the dataset's shipped manifest, whose true labels it compares them with (the students never read those). Writes
``benchmarks/results/pseudo_label_quality_<dataset>_r<R>.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_regimes import NETWORKS, REPO, pseudo_manifest_path, require_data_root  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="pbc_blood_cells_96")
    p.add_argument("--networks", nargs="+", default=["vit_cs_ssl_all5_mx_st"], choices=[n for n, s in NETWORKS.items() if "teacher" in s],
                   help="students; those with the same teacher and selection share a manifest, so name one of them")
    p.add_argument("--regime", type=int, default=3)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--runs", default=str(REPO / "runs" / "regimes"))
    args = p.parse_args()
    require_data_root()
    import medmem
    from medmem.atomic import write_text_atomic

    source = medmem.data.load_manifest(medmem.engine.resolve_manifest(args.dataset))
    truth = {e["sha256"]: e["label"] for e in source["training"]}
    classes = source["classes"]
    lines = [
        f"# Pseudo-labels of the self-training students ({args.dataset}, {args.regime}%)",
        "",
        f"Made by `python benchmarks/regimes/pseudo_label_quality.py --dataset {args.dataset} --networks {' '.join(args.networks)} "
        f"--regime {args.regime} --seeds {' '.join(map(str, args.seeds))}` from the manifests `run_regimes.py` made "
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
        joined = [e for e in derived["training"] if e["pseudo_label"]]
        labelled = len(derived["training"]) - len(joined)
        unlabelled = Counter(e["label"] for e in source["training"]) - Counter(e["label"] for e in derived["training"] if not e["pseudo_label"])
        right = sum(e["label"] == truth[e["sha256"]] for e in joined)
        per_class = Counter(truth[e["sha256"]] for e in joined)
        shares = ", ".join(f"{classes[c]} {per_class[c]} ({per_class[c] / unlabelled[c]:.0%})" for c in range(len(classes)))
        rule = f"{settings['pseudo_threshold']:g}" + (f", quota {settings['class_quota']:g}" if settings.get("class_quota") else "")
        lines.append(f"| `{settings['teacher']}` | {rule} | {seed} | {labelled} | {sum(unlabelled.values())} | {len(joined)} | {right / max(1, len(joined)):.3f} | {shares} |")
    out = REPO / "benchmarks" / "results" / f"pseudo_label_quality_{args.dataset}_r{args.regime}.md"
    write_text_atomic("\n".join(lines) + "\n", out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
