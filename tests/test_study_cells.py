"""The study driver's test of a finished cell: a self-training student's epochs count its larger training set, so the
analysis scripts (memory_off.py, other_space.py, readout_use.py) see a finished student as finished; and the split
those scripts score."""

import json
from pathlib import Path

import pytest

from tests.conftest import benchmark_script


@pytest.fixture(scope="module")
def run_regimes():
    return benchmark_script("run_regimes")


def checkpoint(runs: Path, network: str, epoch: int) -> None:
    models = runs / "pbc_blood_cells_96" / f"{network}_r3_s0" / "models"
    models.mkdir(parents=True, exist_ok=True)
    (models / f"checkpoint_epoch={epoch}.pt").write_bytes(b"")


def test_student_finishes_at_its_own_epochs(run_regimes, tmp_path):
    manifest = {"classes": ["a", "b"], "training": [{}] * 1000, "regimes": {"3": list(range(362))}}
    plain, student = "vit_cs_ssl_all5", "vit_cs_ssl_all5_st85"
    # 500 steps over ceil(362 / 64) = 6 batches: 84 epochs; the student's 8,256 images make 129 batches: 4 epochs
    assert run_regimes.planned_epochs(manifest, plain, 3) == 84
    pseudo = run_regimes.pseudo_manifest_path("pbc_blood_cells_96", student, 3, 0, tmp_path)
    # no manifest yet: unfinished, and the check does not go and make one (which would score the teacher)
    assert not run_regimes.cell_finished("pbc_blood_cells_96", student, 3, 0, tmp_path, manifest)
    pseudo.parent.mkdir(parents=True)
    pseudo.write_text(json.dumps({"classes": ["a", "b"], "training": [{}] * 8256}))

    assert not run_regimes.cell_finished("pbc_blood_cells_96", plain, 3, 0, tmp_path, manifest)
    checkpoint(tmp_path, plain, 83)
    assert not run_regimes.cell_finished("pbc_blood_cells_96", plain, 3, 0, tmp_path, manifest)
    checkpoint(tmp_path, plain, 84)
    assert run_regimes.cell_finished("pbc_blood_cells_96", plain, 3, 0, tmp_path, manifest)

    checkpoint(tmp_path, student, 4)
    assert run_regimes.cell_finished("pbc_blood_cells_96", student, 3, 0, tmp_path, manifest)
    # the regime's own 362 images would ask a student for 84 epochs, and call its finished run unfinished
    assert not run_regimes.finished(
        tmp_path / "pbc_blood_cells_96" / f"{student}_r3_s0", run_regimes.planned_epochs(manifest, student, 3)
    )


@pytest.mark.parametrize("split", [None, "validation"])
def test_tabulate_scores_the_split_asked(split, monkeypatch):
    seed_tables = benchmark_script("seed_tables")
    loaded = []

    def fake_arrays(dataset, which, regime, size, channels):
        loaded.append(which)
        return "x", "y"

    monkeypatch.setattr(seed_tables, "load_arrays", fake_arrays)
    scores = {"off": {"acc": 0.75, "auc": 0.9}, "plain": {"acc": 0.5, "auc": 0.8}, "read": {"gate": 0.5}}
    seen = []
    measure = lambda dataset, seed, manifest, x, y: seen.append((x, y)) or scores  # noqa: E731
    cells = [(["pneumoniamnist"], "pneumoniamnist", {})]
    args = (cells, [0, 1], measure, ("off", "plain"), ("gate",), ("off", "plain"))
    rows, summary = seed_tables.tabulate(*args) if split is None else seed_tables.tabulate(*args, split)
    assert loaded == [split or "test"]  # one load per dataset, of the split asked (the test split by default)
    assert seen == [("x", "y")] * 2
    assert summary == ["| pneumoniamnist | 2 | 0.750 / 0.900 | 0.500 / 0.800 | +25.0 |"]
    assert len(rows) == 2
