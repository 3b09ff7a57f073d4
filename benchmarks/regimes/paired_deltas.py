"""Per-seed test ACC and AUC differences between two driver models, cell by cell (same dataset, regime, seed).

    python benchmarks/regimes/paired_deltas.py vit vit_cs        # what the conv stem changed
    python benchmarks/regimes/paired_deltas.py vit_cs movit_cs   # what the memory adds on the conv stem

Reads the study's results files (``run_regimes.RESULT_FILES``) and any others named with ``--csv`` (e.g.
``benchmarks/results/case_vote.csv benchmarks/results/more_seeds.csv``; with ``--only``, those files alone); prints one line per cell both models ran
(ACC and AUC of each, B - A in points), then per (dataset, regime) both models' means over those seeds, the mean
difference, how many seeds B leads and the paired t statistic (mean over its standard error; compare with Student's t at
n - 1 degrees of freedom: p = 0.05 two-sided is 4.30 at 2, 2.78 at 4, 2.57 at 5).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_regimes import read_all_results, read_rows  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="driver model A (e.g. vit)")
    p.add_argument("b", help="driver model B (e.g. vit_cs)")
    p.add_argument("--csv", nargs="*", default=[], help="more results files to read besides the committed study files")
    # rows of another machine (e.g. gpu_replication.csv) share their cells' keys with the CPU study's: pair them alone
    p.add_argument("--only", action="store_true", help="read only the --csv files, not the committed study files")
    args = p.parse_args()
    rows = ([] if args.only else read_all_results()) + [r for path in args.csv for r in read_rows(Path(path))]
    metric = {(r["dataset"], r["model"], int(r["regime"]), int(r["seed"])): (float(r["acc"]), float(r["auc"])) for r in rows}
    # (dataset, regime) -> per seed ((ACC, AUC) of A, (ACC, AUC) of B)
    pairs: dict[tuple, list[tuple[tuple[float, float], tuple[float, float]]]] = defaultdict(list)
    for dataset, model, regime, seed in sorted(k for k in metric if k[1] == args.a):
        other = (dataset, args.b, regime, seed)
        if other in metric:
            (acc_a, auc_a), (acc_b, auc_b) = metric[(dataset, model, regime, seed)], metric[other]
            pairs[(dataset, regime)].append(((acc_a, auc_a), (acc_b, auc_b)))
            print(f"{dataset} {regime}% seed {seed}: {args.a} {acc_a:.3f} / {auc_a:.3f}  {args.b} {acc_b:.3f} / {auc_b:.3f}  "
                  f"{100 * (acc_b - acc_a):+.1f} / {100 * (auc_b - auc_a):+.1f} points")
    for (dataset, regime), seeds in sorted(pairs.items()):
        means = [statistics.mean(pair[i][m] for pair in seeds) for i in (0, 1) for m in (0, 1)]
        print(f"{dataset} {regime}%, means over the {len(seeds)} paired seeds: {args.a} {means[0]:.3f} / {means[1]:.3f}, "
              f"{args.b} {means[2]:.3f} / {means[3]:.3f}")
        acc, auc = ([100 * (b[m] - a[m]) for a, b in seeds] for m in (0, 1))
        print(f"{dataset} {regime}%: {args.b} - {args.a} over {len(seeds)} seeds: ACC {paired_summary(acc)}; AUC {paired_summary(auc)}")


def paired_summary(deltas: list[float]) -> str:
    """Mean difference, range, seeds ahead and the paired t statistic (mean over its standard error)."""
    mean = statistics.mean(deltas)
    text = f"mean {mean:+.2f} ({min(deltas):+.1f} to {max(deltas):+.1f}), ahead on {sum(d > 0 for d in deltas)} of {len(deltas)}"
    # deltas equal on every seed (to rounding, e.g. the same test images flipped) leave no spread to divide by
    if len(deltas) > 1 and statistics.stdev(deltas) > 1e-6:
        text += f", t = {mean / (statistics.stdev(deltas) / len(deltas) ** 0.5):+.2f}"
    elif len(deltas) > 1:
        text += ", the same on every seed"
    return text


if __name__ == "__main__":
    main()
