"""The study's merge step: lane rows reach the committed results files by seed, and a committed cell is never rewritten."""

import csv
from pathlib import Path

import pytest

from tests.conftest import benchmark_script


@pytest.fixture(scope="module")
def merge_rows():
    return benchmark_script("merge_rows")


def row(model: str, seed: int, acc: float) -> dict:
    return {"dataset": "pbc_blood_cells_96", "model": model, "regime": "3", "seed": str(seed), "train_images": "362",
            "epochs": "88", "acc": str(acc), "auc": "0.99", "f1": "0.9", "wall_s": "1.0"}  # fmt: skip


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def test_rows_go_by_seed_and_committed_cells_are_reported_not_rewritten(tmp_path, merge_rows):
    first, later = tmp_path / "case_vote.csv", tmp_path / "more_seeds.csv"
    write_csv(first, [row("vit", 0, 0.90)], list(row("vit", 0, 0.90)))  # the driver's columns, in its order
    lane = [row("vit", 0, 0.91), row("vit_mx", 0, 0.92), row("vit_mx", 3, 0.93), row("vit_mx", 3, 0.50)]

    new, repeated = merge_rows.merge(lane, first, later, split_seed=3)
    for path, rows in new.items():
        merge_rows.append_rows(path, rows)

    committed_first = list(csv.DictReader(open(first)))
    assert [(r["model"], r["seed"], r["acc"]) for r in committed_first] == [("vit", "0", "0.9"), ("vit_mx", "0", "0.92")]
    # the later seed goes to its own file, the first of two lane rows of one cell wins
    assert [(r["model"], r["seed"], r["acc"]) for r in csv.DictReader(open(later))] == [("vit_mx", "3", "0.93")]
    # the rerun of the committed cell and the lane's second row of one cell are reported beside the row kept
    assert [(lane_row["acc"], known["acc"]) for lane_row, known in repeated] == [("0.91", "0.9"), ("0.5", "0.93")]
