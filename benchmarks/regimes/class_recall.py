"""Per-class test recall of trained study networks, from the confusion matrices their evaluations wrote.

    python benchmarks/regimes/class_recall.py --dataset pbc_blood_cells_96 --regime 3 --seeds 0 1 \
        --networks vit_cs_ssl_all5_mx_steps3x vit_cs_ssl_all5_mx_st_steps3x vit_cs_ssl_all5_mx_stq5_steps3x

Reads ``runs/regimes/<dataset>/<network>_r<R>_s<S>/eval_test_<mode>/test_metrics.json`` (the bundle's evaluate.json
report) and writes ``benchmarks/results/class_recall_<dataset>_r<R>.md``: where two networks with the same overall ACC
differ, class by class.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_regimes import NETWORKS, REPO  # noqa: E402


def recall(confusion: list[list[int]]) -> np.ndarray:
    """Recall per true class (C,) of a confusion matrix with true classes as rows."""
    m = np.asarray(confusion, dtype=np.float64)
    return m.diagonal() / np.maximum(m.sum(axis=1), 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="pbc_blood_cells_96")
    p.add_argument("--regime", type=int, default=3)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--networks", nargs="+", required=True, choices=sorted(NETWORKS))
    p.add_argument("--runs", default=str(REPO / "runs" / "regimes"))
    args = p.parse_args()
    from medmem.atomic import write_text_atomic

    rows, classes = [], None
    for network in args.networks:
        mode = NETWORKS[network]["memory_mode"]
        per_seed = []
        for seed in args.seeds:
            path = Path(args.runs) / args.dataset / f"{network}_r{args.regime}_s{seed}" / f"eval_test_{mode}" / "test_metrics.json"
            if not path.exists():
                sys.exit(f"{path}: not evaluated yet")
            report = json.loads(path.read_text())
            classes = classes or report.get("classes") or [str(c) for c in range(len(report["confusion_matrix"]))]
            per_seed.append(recall(report["confusion_matrix"]))
        rows.append((network, np.mean(per_seed, axis=0)))
    lines = [
        f"# Per-class test recall ({args.dataset}, {args.regime}%, mean over seeds {' '.join(map(str, args.seeds))})",
        "",
        f"Made by `python benchmarks/regimes/class_recall.py --dataset {args.dataset} --regime {args.regime} --seeds "
        f"{' '.join(map(str, args.seeds))} --networks {' '.join(args.networks)}` from the evaluations' confusion matrices.",
        "",
        "| network | " + " | ".join(classes) + " |",
        "|---|" + "---|" * len(classes),
    ]
    lines += [f"| `{network}` | " + " | ".join(f"{r:.3f}" for r in values) + " |" for network, values in rows]
    out = REPO / "benchmarks" / "results" / f"class_recall_{args.dataset}_r{args.regime}.md"
    write_text_atomic("\n".join(lines) + "\n", out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
