"""The parallel study driver: processes start seed by seed, rows are merged once, and a deadline ends what still runs."""

import csv
import sys
import textwrap

import pytest

from tests.conftest import benchmark_script


@pytest.fixture(scope="module")
def run_many():
    return benchmark_script("run_many")


def test_units_start_seed_by_seed(run_many):
    units = run_many.units(["pneumoniamnist", "brain_tumor_mri_training"], [1, 3], [0, 1], ["vit_cs", "vit_cs_knn"])
    assert [u[:3] for u in units[:4]] == [("pneumoniamnist", 1, 0), ("brain_tumor_mri_training", 1, 0), ("pneumoniamnist", 3, 0), ("brain_tumor_mri_training", 3, 0)]
    assert [s for _, _, s, _ in units] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert all(models == ["vit_cs", "vit_cs_knn"] for *_, models in units)  # the k-NN runs after the network it reads


def test_per_model_gives_each_model_its_own_process(run_many):
    units = run_many.units(["pbc_blood_cells_96"], [3], [0, 1], ["vit_cs", "movit_cs"], per_model=True)
    assert units == [("pbc_blood_cells_96", 3, 0, ["vit_cs"]), ("pbc_blood_cells_96", 3, 0, ["movit_cs"]),
                     ("pbc_blood_cells_96", 3, 1, ["vit_cs"]), ("pbc_blood_cells_96", 3, 1, ["movit_cs"])]  # fmt: skip


# a stand-in for run_regimes.py: PneumoniaMNIST cells write their rows at once, brain MRI cells hang
FAKE_DRIVER = textwrap.dedent(
    """
    import argparse, csv, time
    p = argparse.ArgumentParser()
    for name in ("--dataset", "--out", "--runs"):
        p.add_argument(name)
    for name in ("--models", "--regimes", "--seeds"):
        p.add_argument(name, nargs="+")
    a = p.parse_args()
    if a.dataset != "pneumoniamnist":
        time.sleep(120)
    cols = ["dataset", "model", "regime", "seed", "train_images", "epochs", "acc", "auc", "f1", "wall_s"]
    with open(a.out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for m in a.models:
            w.writerow({"dataset": a.dataset, "model": m, "regime": a.regimes[0], "seed": a.seeds[0], "train_images": 48,
                        "epochs": 300, "acc": 0.8, "auc": 0.9, "f1": 0.8, "wall_s": 1.0})
    """
)


@pytest.mark.parametrize("per_model", [False, True])
def test_rows_merge_once_and_the_deadline_ends_hung_cells(tmp_path, monkeypatch, run_many, per_model):
    driver = tmp_path / "fake_driver.py"
    driver.write_text(FAKE_DRIVER)
    monkeypatch.setattr(run_many, "DRIVER", driver)
    out = tmp_path / "rows.csv"
    argv = ["run_many.py", "--datasets", "pneumoniamnist", "brain_tumor_mri_training", "--models", "vit_cs", "movit_cs",
            "--regimes", "1", "--seeds", "0", "1", "--workers", "4", "--out", str(out), "--runs", str(tmp_path / "runs"),
            "--kill_after_s", "8"] + (["--workers", "8", "--per_model"] if per_model else [])  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    run_many.main()
    rows = list(csv.DictReader(open(out)))
    # both PneumoniaMNIST processes finished (2 seeds x 2 models); the hung brain MRI ones were ended and left no row
    assert sorted((r["dataset"], r["model"], r["seed"]) for r in rows) == [
        ("pneumoniamnist", m, s) for m in ("movit_cs", "vit_cs") for s in ("0", "1")
    ]
    # merging the same parts again adds nothing
    parts = sorted((tmp_path / "rows.csv.parts").glob("*.csv"))
    assert len(parts) == (4 if per_model else 2) and run_many.merge_parts(out, parts) == 0
