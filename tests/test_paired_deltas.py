"""Per-seed pairs: ``--only`` pairs the rows of the named files alone (another machine's runs of the same cells)."""

import csv
import sys

from tests.conftest import benchmark_script

COLUMNS = ["dataset", "model", "regime", "seed", "train_images", "epochs", "acc", "auc", "f1", "wall_s"]


def test_only_reads_the_named_files(tmp_path, monkeypatch, capsys):
    paired_deltas = benchmark_script("paired_deltas")
    rows = tmp_path / "gpu.csv"
    with open(rows, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for model, acc in (("vit_cs", 0.80), ("movit_cs", 0.85)):
            writer.writerow({"dataset": "pneumoniamnist", "model": model, "regime": 1, "seed": 0, "train_images": 48,
                             "epochs": 300, "acc": acc, "auc": 0.9, "f1": 0.8, "wall_s": 1.0})  # fmt: skip

    def summary(*flags: str) -> str:
        monkeypatch.setattr(sys, "argv", ["paired_deltas.py", "vit_cs", "movit_cs", "--csv", str(rows), *flags])
        paired_deltas.main()
        return next(line for line in capsys.readouterr().out.splitlines() if line.startswith("pneumoniamnist 1%: movit_cs - vit_cs"))

    assert "over 1 seeds: ACC mean +5.00" in summary("--only")
    # without --only the committed study's seeds 1 and 2 of the cell join this file's seed 0
    assert "over 3 seeds" in summary()
