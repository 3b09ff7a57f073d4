"""Per-seed test ACC differences between two driver models, cell by cell (same dataset, regime, seed).

    python benchmarks/regimes/paired_deltas.py vit vit_cs        # what the conv stem changed
    python benchmarks/regimes/paired_deltas.py vit_cs movit_cs   # what the memory adds on the conv stem

Reads every committed results file (``run_regimes.RESULT_FILES``); prints one line per cell both models ran
(ACC of each, B - A in points) and the range of the differences.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_regimes import read_all_results  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="driver model A (e.g. vit)")
    p.add_argument("b", help="driver model B (e.g. vit_cs)")
    args = p.parse_args()
    acc = {(r["dataset"], r["model"], int(r["regime"]), int(r["seed"])): float(r["acc"]) for r in read_all_results()}
    deltas = []
    for dataset, model, regime, seed in sorted(k for k in acc if k[1] == args.a):
        other = (dataset, args.b, regime, seed)
        if other in acc:
            d = 100 * (acc[other] - acc[(dataset, model, regime, seed)])
            deltas.append(d)
            print(f"{dataset} {regime}% seed {seed}: {args.a} {acc[(dataset, model, regime, seed)]:.3f}  {args.b} {acc[other]:.3f}  {d:+.1f} points")
    if deltas:
        print(f"{len(deltas)} paired cells, {args.b} - {args.a}: {min(deltas):+.1f} to {max(deltas):+.1f} points")


if __name__ == "__main__":
    main()
