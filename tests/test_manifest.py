"""Manifest properties: leakage-free splits, nested stratified regimes, determinism; shipped manifests."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from medmem.cli import main as cli_main
from medmem.data.manifest import SPLITS, Candidate, build_manifest, check_manifest, load_manifest, make_regimes

SHIPPED = ["pbc_blood_cells_96", "brain_tumor_mri", "brain_tumor_mri_training", "pneumoniamnist", "lc25000_64"]
MANIFEST_DIR = Path(__file__).resolve().parent.parent / "data_manifests"


def synthetic(n_groups: int = 60, per_group: int = 3, classes: int = 3) -> list[Candidate]:
    out = []
    for g in range(n_groups):
        for j in range(per_group):
            out.append(Candidate(f"img_{g}_{j}.png", f"c{g % classes}", group=f"g{g}", sha256=f"{g:04d}{j:04d}"))
    return out


def test_groups_never_straddle_and_fractions_hold():
    m = build_manifest("x", synthetic(), fractions={"training": 0.7, "validation": 0.1, "test": 0.2}, seed=1)
    where = {}
    for split in SPLITS:
        for e in m[split]:
            assert where.setdefault(e["group"], split) == split
    sizes = {s: len(m[s]) for s in SPLITS}
    assert sum(sizes.values()) == 180
    assert abs(sizes["training"] / 180 - 0.7) < 0.06 and abs(sizes["test"] / 180 - 0.2) < 0.06
    for split in SPLITS:  # stratified: every class in every split
        assert len({e["label"] for e in m[split]}) == 3


def test_duplicates_across_official_splits_leave_training():
    cands = [
        Candidate("train/a.png", "x", split="training", sha256="same"),
        Candidate("test/a.png", "x", split="test", sha256="same"),
        Candidate("train/b.png", "y", split="training", sha256="b"),
        Candidate("train/c.png", "x", split="training", sha256="c"),
        Candidate("test/d.png", "y", split="test", sha256="d"),
        Candidate("train/e.png", "x", split="training", sha256="conflict"),
        Candidate("train/f.png", "y", split="training", sha256="conflict"),
    ]
    m = build_manifest("x", cands, validation_fraction=0.34, seed=0)
    images = {s: {e["image"] for e in m[s]} for s in SPLITS}
    assert "test/a.png" in images["test"] and "train/a.png" not in images["training"] | images["validation"]
    removed = {r["image"]: r["reason"] for r in m["removed"]}
    assert "exact duplicate of test/a.png" in removed["train/a.png"]
    assert "conflicting labels" in removed["train/e.png"] and "conflicting labels" in removed["train/f.png"]
    hashes = [e["sha256"] for s in SPLITS for e in m[s]]
    assert len(hashes) == len(set(hashes))


def test_regimes_are_nested_stratified_and_deterministic():
    training = [{"label": i % 4, "sha256": f"{i:08x}"} for i in range(400)]
    training.append({"label": 4, "sha256": "rare"})  # a class with one example
    a = make_regimes(training, seed=3)
    assert a == make_regimes(list(training), seed=3)
    assert a != make_regimes(training, seed=4)
    previous: set = set()
    for pct in ("1", "3", "10", "30", "100"):
        chosen = set(a[pct])
        assert previous <= chosen
        counts = Counter(training[i]["label"] for i in chosen)
        assert set(counts) == {0, 1, 2, 3, 4}
        if pct != "100":
            assert all(abs(counts[c] - 100 * int(pct) / 100) <= 1 for c in range(4))
        previous = chosen
    assert len(a["100"]) == len(training)


def test_build_is_stable_for_a_seed():
    m1 = build_manifest("x", synthetic(), fractions={"training": 0.7, "validation": 0.1, "test": 0.2}, seed=5)
    m2 = build_manifest("x", list(reversed(synthetic())), fractions={"training": 0.7, "validation": 0.1, "test": 0.2}, seed=5)
    assert json.dumps(m1) == json.dumps(m2)


def test_check_finds_leakage_and_bad_regimes():
    m = build_manifest("x", synthetic(), fractions={"training": 0.7, "validation": 0.1, "test": 0.2}, seed=0)
    m["test"].append(dict(m["training"][0]))
    m["regimes"]["1"] = m["regimes"]["1"] + [len(m["training"]) + 5]
    problems = check_manifest(m, Path("/nonexistent"), verify_hashes=False)
    assert any("leakage" in p and "same content" in p for p in problems)
    assert any("leakage: group" in p for p in problems)
    assert any("regime 1: index out of range" in p for p in problems)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_manifest_checks_clean(name, data_root):
    manifest = load_manifest(MANIFEST_DIR / f"{name}.json")
    assert check_manifest(manifest, data_root) == []
    assert manifest["removed"] is not None and "split_policy" in manifest


def test_cli_check_exits_nonzero_on_tampered_manifest(tmp_path, data_root, capsys):
    manifest = load_manifest(MANIFEST_DIR / "pneumoniamnist.json")
    manifest["training"][0]["sha256"] = "0" * 64
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(manifest))
    assert cli_main(["manifest", "--data-root", str(data_root), "--check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "content hash differs" in out and manifest["training"][0]["image"] in out
    assert cli_main(["manifest", "--data-root", str(data_root), "--check", str(MANIFEST_DIR / "pneumoniamnist.json")]) == 0


def test_cli_builds_from_folder_and_csv(tmp_path, data_root):
    out = tmp_path / "tiles.json"
    assert cli_main(["manifest", "--data-root", str(data_root), "--folder", "brain_tumor_mri/Testing", "--name", "t", "--out", str(out)]) == 0
    m = load_manifest(out)
    assert m["classes"] == ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]
    assert check_manifest(m, data_root) == []
    assert any("exact duplicate" in r["reason"] for r in m["removed"])
