"""Merge the driver's rows from lane files (``run_regimes.py --out runs/lane.csv``) into the committed results files.

    python benchmarks/regimes/merge_rows.py runs/s27_*.csv

Seeds 0-2 go to ``case_vote.csv`` and later seeds to ``more_seeds.csv`` (so that case_vote.csv compares models over
the same three seeds; ``--split-seed`` and ``--first``/``--later`` change that). A row whose cell (dataset, model,
regime, seed) is already committed (or came earlier in the lanes) is not written again: the script prints it beside
the merged one, so a rerun of a committed cell (e.g. after its run folder was lost) shows whether it reproduced. Regenerate the tables with
``report.py --csv <file>`` afterwards.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_regimes import REPO, append_rows, read_rows  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def cell(row: dict) -> tuple[str, str, int, int]:
    return row["dataset"], row["model"], int(row["regime"]), int(row["seed"])


def merge(lane_rows: list[dict], first: Path, later: Path, split_seed: int) -> tuple[dict[Path, list[dict]], list[tuple[dict, dict]]]:
    """Split ``lane_rows`` by seed into rows new to ``first`` / ``later`` and (lane row, committed row) pairs for cells
    already there. The first lane row of a cell wins; a later lane row of the same cell is paired with it."""
    committed = {path: {cell(r): r for r in read_rows(path)} for path in (first, later)}
    new: dict[Path, list[dict]] = {first: [], later: []}
    repeated: list[tuple[dict, dict]] = []
    for row in lane_rows:
        target = first if int(row["seed"]) < split_seed else later
        known = committed[target].get(cell(row))
        if known is not None:
            repeated.append((row, known))
            continue
        committed[target][cell(row)] = row
        new[target].append(row)
    return new, repeated


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("lanes", nargs="+", type=Path, help="the driver's --out files")
    p.add_argument("--first", type=Path, default=RESULTS / "case_vote.csv", help="where seeds below --split-seed go")
    p.add_argument("--later", type=Path, default=RESULTS / "more_seeds.csv", help="where later seeds go")
    p.add_argument("--split-seed", type=int, default=3)
    args = p.parse_args()
    lane_rows = [r for path in args.lanes for r in read_rows(path)]
    new, repeated = merge(lane_rows, args.first, args.later, args.split_seed)
    for lane, known in repeated:
        same = "same" if (lane["acc"], lane["auc"]) == (known["acc"], known["auc"]) else "DIFFERENT"
        print(f"already merged, not written: {' '.join(map(str, cell(lane)))}: this row {float(lane['acc']):.4f} / "
              f"{float(lane['auc']):.4f}, the merged one {float(known['acc']):.4f} / {float(known['auc']):.4f} ({same})")
    for path, rows in new.items():
        if rows:
            append_rows(path, rows)
        print(f"{path.name}: {len(rows)} new rows")


if __name__ == "__main__":
    main()
