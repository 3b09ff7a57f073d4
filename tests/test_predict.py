"""``medmem predict`` on a mixed folder of real files with broken ones added."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pydicom
import pytest
import torch

from medmem.engine.batch_predict import run_prediction
from medmem.engine.summarize import write_model_card
from medmem.memory.prototypes import summarize_memory
from medmem.networks import MemoryViT
from tests.conftest import dicom_file, nifti_file, pydicom_test_dir


@pytest.fixture(scope="module")
def deployable(tmp_path_factory) -> Path:
    """A small prototypes-mode model with a model card naming its training cases."""
    torch.manual_seed(0)
    model = MemoryViT(1, 16, 4, 3, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2, memory_k=4, num_prototypes=8)
    x, y, ids = torch.rand(12, 1, 16, 16), torch.arange(12) % 3, torch.arange(12) + 100
    model.write_memory(x, ids, y)
    summarize_memory(model, [{"image": x, "label": y, "sample_id": ids}], epochs=2)
    from medmem.memory.prototypes import drop_full_memory

    drop_full_memory(model)
    folder = tmp_path_factory.mktemp("model")
    torch.save(model.state_dict(), folder / "model.pt")
    # ids divisible by 4 were pseudo-labelled by a teacher network; 111 is named as cards before bundle 0.15.0 named cases
    cases = {str(int(i)): [f"train/case_{int(i)}.png", ["a", "b", "c"][int(c)], int(i) % 4 == 0] for i, c in zip(ids, y)}
    cases["111"] = cases["111"][:2]
    from medmem.engine.summarize import familiarity_threshold

    threshold = familiarity_threshold(model, [{"image": x}])
    write_model_card(model, str(folder / "model.json"), ["a", "b", "c"], cases, threshold)
    return folder / "model.pt"


@pytest.fixture()
def mixed_folder(tmp_path, data_root) -> Path:
    root = tmp_path / "in"
    (root / "series").mkdir(parents=True)
    shutil.copy(dicom_file("CT_small.dcm"), root / "ct.dcm")
    shutil.copy(dicom_file("emri_small.dcm"), root / "multiframe.dcm")
    for f in (pydicom_test_dir() / "dicomdirtests/77654033/CT2").iterdir():
        shutil.copy(f, root / "series" / f.name)
    shutil.copy(nifti_file("anatomical.nii"), root / "brain.nii")
    shutil.copy(data_root / "nct_crc_he_100k_tiles/TUM-AACHEHDV.tif", root / "tile.tif")
    shutil.copy(data_root / "pbc_blood_cells_96/basophil/BA_100102.jpg", root / "cell.jpg")
    (root / "truncated.jpg").write_bytes((data_root / "pbc_blood_cells_96/basophil/BA_100102.jpg").read_bytes()[:200])
    (root / "empty.nii.gz").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    del ds.PixelData
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()  # a stray file, not a slice of ct.dcm's series
    ds.save_as(root / "nopixels.dcm")
    return root


EXPECTED_INPUTS = {"brain.nii", "cell.jpg", "ct.dcm", "multiframe.dcm", "tile.tif", "series#1.3.6.1.4.1.5962.1.1.0.0.0.1196530851.28319.0.2"}
EXPECTED_ERRORS = {"empty.nii.gz", "notes.txt", "truncated.jpg", "nopixels.dcm"}


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path)))


def test_rows_errors_and_evidence(deployable, mixed_folder, tmp_path):
    out = tmp_path / "out"
    result = run_prediction([str(mixed_folder)], str(deployable), str(out), batch_size=4, workers=2)
    rows = read_csv(out / "predictions.csv")
    errors = {r["input"]: r["reason"] for r in read_csv(out / "errors.csv")}
    assert {r["input"] for r in rows} == EXPECTED_INPUTS
    assert set(errors) == EXPECTED_ERRORS and result == {"predicted": 6, "errors": 4}
    assert "no pixel data" in errors["nopixels.dcm"] and "unsupported file type" in errors["notes.txt"]
    for r in rows:
        probs = [float(r[f"prob_{c}"]) for c in "abc"]
        assert abs(sum(probs) - 1) < 1e-4 and r["predicted"] == "abc"[probs.index(max(probs))]
        assert 0.0 < float(r["memory_reliance"]) < 1.0
    threshold = json.loads(deployable.with_suffix(".json").read_text())["ood_threshold"]
    assert all((float(r["familiarity"]) < threshold) == (r["out_of_distribution"] == "True") for r in rows)
    series = next(r for r in rows if r["input"].startswith("series#"))
    assert series["series_uid"] == "1.3.6.1.4.1.5962.1.1.0.0.0.1196530851.28319.0.2"
    first = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert 1 <= len(first["similar_cases"]) <= 5
    assert all(c["case"].startswith("train/case_") and c["class"] in "abc" for c in first["similar_cases"])
    # every case says whether a teacher network gave its class, in the JSON lines and in the table
    shown = [c for line in (out / "predictions.jsonl").read_text().splitlines() for c in json.loads(line)["similar_cases"]]
    assert all(c["pseudo_label"] == (c["sample_id"] % 4 == 0) for c in shown) and {c["pseudo_label"] for c in shown} == {True, False}
    cells = [cell for r in rows for cell in r["similar_cases"].split("; ")]
    assert all(cell.endswith(":pseudo-label") == (int(cell.split(":")[0]) % 4 == 0) for cell in cells)


def test_dihedral_averages_the_probabilities_and_keeps_the_images_own_evidence(deployable, mixed_folder, tmp_path):
    from medmem.engine.batch_predict import Study, StudyLoader, load_deployable
    from medmem.engine.dihedral import dihedral_probabilities

    plain, averaged = tmp_path / "plain", tmp_path / "averaged"
    run_prediction([str(mixed_folder)], str(deployable), str(plain), batch_size=4)
    run_prediction([str(mixed_folder)], str(deployable), str(averaged), batch_size=4, dihedral=True)
    one = {json.loads(line)["input"]: json.loads(line) for line in (plain / "predictions.jsonl").read_text().splitlines()}
    eight = {json.loads(line)["input"]: json.loads(line) for line in (averaged / "predictions.jsonl").read_text().splitlines()}
    assert set(one) == set(eight) == EXPECTED_INPUTS and {r["views"] for r in one.values()} == {1} and {r["views"] for r in eight.values()} == {8}
    assert {r["views"] for r in read_csv(plain / "predictions.csv")} == {"1"} and {r["views"] for r in read_csv(averaged / "predictions.csv")} == {"8"}
    with pytest.raises(ValueError, match="averaged: the predictions there were made with --dihedral; resume them the same way"):
        run_prediction([str(mixed_folder)], str(deployable), str(averaged), resume=True)
    network, card = load_deployable(str(deployable))
    image = StudyLoader(card["network"]["img_size"], 1, 2).load(Study("cell.jpg", str(mixed_folder / "cell.jpg")))[None]
    with torch.no_grad():
        by_hand = dihedral_probabilities(network, image)[0]
    assert [eight["cell.jpg"]["probabilities"][c] for c in "abc"] == pytest.approx(by_hand.tolist(), abs=1e-5)
    assert any(eight[k]["probabilities"] != one[k]["probabilities"] for k in one)  # the views changed something
    for key in one:  # the evidence is the image's own, as without the views
        for field in ("memory_reliance", "familiarity", "out_of_distribution", "similar_cases"):
            assert eight[key][field] == one[key][field], (key, field)


def test_memory_off_predicts_from_the_plain_forward_and_keeps_the_prototypes_recall_as_evidence(deployable, mixed_folder, tmp_path):
    from medmem.engine.batch_predict import Study, StudyLoader, load_deployable

    read, off = tmp_path / "read", tmp_path / "off"
    run_prediction([str(mixed_folder)], str(deployable), str(read), batch_size=4)
    result = run_prediction([str(mixed_folder)], str(deployable), str(off), batch_size=4, memory_mode="off")
    assert result == {"predicted": 6, "errors": 4}
    with_memory = {json.loads(line)["input"]: json.loads(line) for line in (read / "predictions.jsonl").read_text().splitlines()}
    without = {json.loads(line)["input"]: json.loads(line) for line in (off / "predictions.jsonl").read_text().splitlines()}
    assert {r["memory_mode"] for r in with_memory.values()} == {"prototypes"} and {r["memory_mode"] for r in without.values()} == {"off"}
    table = read_csv(off / "predictions.csv")
    assert {r["memory_mode"] for r in table} == {"off"} and {r["memory_reliance"] for r in table} == {""}  # no memory read
    network, card = load_deployable(str(deployable))
    network.set_memory_mode("off")
    image = StudyLoader(card["network"]["img_size"], 1, 2).load(Study("cell.jpg", str(mixed_folder / "cell.jpg")))[None]
    with torch.no_grad():
        by_hand = network(image).softmax(-1)[0]
    assert [without["cell.jpg"]["probabilities"][c] for c in "abc"] == pytest.approx(by_hand.tolist(), abs=1e-5)
    assert any(without[k]["probabilities"] != with_memory[k]["probabilities"] for k in without)  # the read changed something
    for key in without:  # the evidence is what the prototypes recall for the image, as with the memory read
        assert without[key]["similar_cases"] == with_memory[key]["similar_cases"] and without[key]["familiarity"] == with_memory[key]["familiarity"]
    run_prediction([str(mixed_folder)], str(deployable), str(tmp_path / "explained"), memory_mode="off", explain=True)
    assert (tmp_path / "explained" / "index.html").read_text().count("<td>memory off</td>") == 6
    with pytest.raises(ValueError, match="off: the predictions there were made with memory mode off; resume them the same way"):
        run_prediction([str(mixed_folder)], str(deployable), str(off), resume=True)
    with pytest.raises(ValueError, match="vote.pt: the case vote's weight was chosen on validation against the network reading its memory"):
        run_prediction([str(mixed_folder)], str(deployable), str(tmp_path / "x"), memory_mode="off", case_vote=str(tmp_path / "vote.pt"))
    with pytest.raises(ValueError, match=r"memory_mode must be one of \('prototypes', 'off'\)"):
        run_prediction([str(mixed_folder)], str(deployable), str(tmp_path / "y"), memory_mode="full")


def test_dihedral_refuses_a_model_whose_input_a_turn_would_not_fit_and_warns_for_one_trained_without_turns(deployable, mixed_folder, tmp_path, capsys):
    card = json.loads(deployable.with_suffix(".json").read_text())
    (tmp_path / "no_turns.json").write_text(json.dumps({**card, "augmentation": {"rotate90": False, "intensity": False}}))
    run_prediction([str(mixed_folder / "cell.jpg")], str(deployable), str(tmp_path / "turns"), card_path=str(tmp_path / "no_turns.json"), dihedral=True)
    assert "model.pt: the model card says this network was not trained with right-angle turns" in capsys.readouterr().err
    run_prediction([str(mixed_folder / "cell.jpg")], str(deployable), str(tmp_path / "plain"), card_path=str(tmp_path / "no_turns.json"))
    assert "right-angle turns" not in capsys.readouterr().err
    volume = MemoryViT(1, 16, 8, 3, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2, memory_k=4, num_prototypes=8, spatial_dims=3)
    torch.save(volume.state_dict(), tmp_path / "volume.pt")
    write_model_card(volume, str(tmp_path / "volume.json"), ["a", "b", "c"], {}, None)
    with pytest.raises(ValueError, match=r"volume\.pt: averaging over flips and turns needs a 2D model with square input, this one takes \[16, 16, 16\]"):
        run_prediction([str(mixed_folder)], str(tmp_path / "volume.pt"), str(tmp_path / "out"), dihedral=True)


def test_no_patient_identifiers_in_outputs(deployable, mixed_folder, tmp_path):
    out = tmp_path / "out"
    run_prediction([str(mixed_folder)], str(deployable), str(out))
    phi = set()
    for f in [mixed_folder / "ct.dcm", mixed_folder / "multiframe.dcm", *sorted((mixed_folder / "series").iterdir())]:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        for tag in ("PatientName", "PatientID", "PatientBirthDate", "PatientAddress", "InstitutionName", "ReferringPhysicianName"):
            value = str(ds.get(tag, "") or "")
            if len(value) > 3:
                phi.add(value)
    assert phi, "the test files should carry identifying tags for this test to mean anything"
    text = "".join(p.read_text() for p in out.iterdir())
    assert not [v for v in phi if v in text]


def test_resume_after_interruption_gives_the_same_files(deployable, mixed_folder, tmp_path):
    whole = tmp_path / "whole"
    run_prediction([str(mixed_folder)], str(deployable), str(whole), batch_size=2)
    part = tmp_path / "part"
    run_prediction([str(mixed_folder)], str(deployable), str(part), batch_size=2)
    lines = (part / "predictions.jsonl").read_text().splitlines()
    # as if killed mid-write: two complete rows and a torn third
    (part / "predictions.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    (part / "predictions.csv").unlink()
    (part / "errors.csv").unlink()
    run_prediction([str(mixed_folder)], str(deployable), str(part), batch_size=2, resume=True)
    for name in ("predictions.csv", "errors.csv"):
        assert (part / name).read_text() == (whole / name).read_text()
    assert len((part / "predictions.jsonl").read_text().splitlines()) == len(EXPECTED_INPUTS)


def test_explain_writes_a_picture_per_input_and_an_index(deployable, mixed_folder, tmp_path):
    out = tmp_path / "out"
    run_prediction([str(mixed_folder)], str(deployable), str(out), explain=True)
    pictures = sorted(p.name for p in (out / "explain").iterdir())
    assert len(pictures) == len(EXPECTED_INPUTS) and all(p.endswith(".png") for p in pictures)
    from PIL import Image

    with Image.open(out / "explain" / "cell.jpg.png") as im:
        assert im.size[0] > 2 * im.size[1]  # input, attention map and recalled cases side by side
    page = (out / "index.html").read_text()
    for key in EXPECTED_INPUTS:
        assert key in page
    assert page.count("<img ") == len(EXPECTED_INPUTS)


def test_torchrun_shards_inputs_into_one_merged_output(deployable, mixed_folder, tmp_path):
    import os
    import subprocess
    import sys

    single = tmp_path / "single"
    run_prediction([str(mixed_folder)], str(deployable), str(single))
    sharded = tmp_path / "sharded"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "medmem.cli", "predict", str(mixed_folder),
           "--model", str(deployable), "--output-dir", str(sharded)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for name in ("predictions.csv", "errors.csv", "predictions.jsonl"):
        assert (sharded / name).read_text() == (single / name).read_text()
    assert not list(sharded.glob("*.part*"))


def test_index_renders_in_headless_chromium(deployable, mixed_folder, tmp_path):
    """The evidence page opens in a real browser (Debian's chromium; skipped where it is not installed)."""
    import shutil as sh
    import subprocess

    browser = sh.which("chromium") or sh.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    out = tmp_path / "out"
    run_prediction([str(mixed_folder)], str(deployable), str(out), explain=True)
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900"]  # fmt: skip
    subprocess.run([browser, *flags, f"--screenshot={shot}", (out / "index.html").as_uri()], capture_output=True, timeout=120)
    from PIL import Image

    with Image.open(shot) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 50  # text and evidence pictures, not a blank page


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(deployable, mixed_folder, tmp_path, data_root):
    import os
    import signal
    import subprocess
    import sys
    import time

    for i, f in enumerate(sorted((data_root / "pbc_blood_cells_96/monocyte").iterdir())[:300]):
        (mixed_folder / f"many_{i:03d}.jpg").symlink_to(f)
    whole = tmp_path / "whole"
    run_prediction([str(mixed_folder)], str(deployable), str(whole), batch_size=8)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "medmem.cli", "predict", str(mixed_folder), "--model", str(deployable), "--output-dir", str(killed), "--batch-size", "8"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    part = killed / "predictions.part0.jsonl"
    deadline = time.time() + 120
    while (not part.exists() or len(part.read_text().splitlines()) < 16) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "predictions.csv").exists()  # killed before the end
    kept = len(part.read_text().splitlines())
    assert 16 <= kept < 306
    subprocess.run(cmd + ["--resume"], check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    for name in ("predictions.csv", "errors.csv", "predictions.jsonl"):
        assert (killed / name).read_text() == (whole / name).read_text()


def predict_with_a_fitted_vote(deployable: Path, folder: Path, tmp_path: Path, **fit_settings) -> tuple:
    """Fit a case vote on 12 random training images (sample ids 100-111, classes a/b/c) against the deployable, fuse it
    half and half, predict ``folder`` with it. Returns the row of ``cell.jpg``, that image as the model reads it, the
    network, the vote, the ids, the output folder and the fitting report."""
    from medmem.engine.batch_predict import Study, StudyLoader, load_deployable
    from medmem.engine.case_vote import fit_case_vote, load_case_vote_file

    torch.manual_seed(1)
    x, y, ids = torch.rand(12, 1, 16, 16), torch.arange(12) % 3, torch.arange(12) + 100
    network, card = load_deployable(str(deployable))
    datalist = [{"sample_id": int(i), "label": int(c), "case_id": f"train/case_{int(i)}.png", "pseudo_label": int(i) % 4 == 0} for i, c in zip(ids, y)]
    path = tmp_path / "case_vote.pt"
    report = fit_case_vote(network, str(deployable), [{"image": x, "label": y, "sample_id": ids}], [{"image": x[:6], "label": y[:6]}],
                           str(path), str(tmp_path / "report.json"), k=4, class_names=["a", "b", "c"], training_datalist=datalist,
                           **fit_settings)  # fmt: skip
    saved = torch.load(path, weights_only=True)
    saved["state_dict"]["weight"].fill_(0.5)  # whatever validation chose: fuse half and half
    torch.save(saved, path)
    vote, _ = load_case_vote_file(str(path))
    out = tmp_path / "out"
    run_prediction([str(folder)], str(deployable), str(out), case_vote=str(path), top_cases=3)
    row = next(json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines() if json.loads(line)["input"] == "cell.jpg")
    image = StudyLoader(card["network"]["img_size"], 1, 2).load(Study("cell.jpg", str(folder / "cell.jpg")))[None]
    with torch.no_grad():
        by_hand = 0.5 * network(image).softmax(-1) + 0.5 * vote.vote(image)
    assert [row["probabilities"][c] for c in "abc"] == pytest.approx(by_hand[0].tolist(), abs=1e-5)
    return row, image, network, vote, ids, out, report


def test_case_vote_fuses_at_its_weight_and_names_the_training_cases_that_voted(deployable, mixed_folder, tmp_path):
    row, image, network, vote, ids, out, _ = predict_with_a_fitted_vote(deployable, mixed_folder, tmp_path, size=8)
    by_hand = torch.tensor([row["probabilities"][c] for c in "abc"])[None]
    assert not torch.allclose(by_hand, network(image).softmax(-1).detach(), atol=1e-3)  # the vote moved it
    nearest, cosines = vote.nearest(image)
    assert [c["sample_id"] for c in row["pixel_similar_cases"]] == (ids[nearest[0, :3]]).tolist()
    assert all(c["case"] == f"train/case_{c['sample_id']}.png" and c["class"] == "abc"[(c["sample_id"] - 100) % 3] for c in row["pixel_similar_cases"])
    assert all(c["pseudo_label"] == (c["sample_id"] % 4 == 0) for c in row["pixel_similar_cases"])
    assert [c["cosine"] for c in row["pixel_similar_cases"]] == pytest.approx(cosines[0, :3].tolist(), abs=1e-4)
    assert read_csv(out / "predictions.csv")[0]["pixel_similar_cases"].count(":train/case_") == 3
    # without it: the network's own probabilities and no pixel cases; a case vote for other images is refused by name
    plain = tmp_path / "plain"
    run_prediction([str(mixed_folder)], str(deployable), str(plain))
    assert all(not json.loads(line)["pixel_similar_cases"] for line in (plain / "predictions.jsonl").read_text().splitlines())
    from medmem.memory.pixel_vote import PixelCaseVote

    rgb = PixelCaseVote(3, 3, size=8, k=4).fit(torch.rand(6, 3, 16, 16), torch.arange(6) % 3)
    torch.save({"config": {"num_classes": 3, "in_channels": 3, "size": 8, "k": 4}, "state_dict": rgb.state_dict()}, tmp_path / "rgb.pt")
    with pytest.raises(ValueError, match=r"rgb\.pt: this case vote was fitted for 3-channel images"):
        run_prediction([str(mixed_folder)], str(deployable), str(tmp_path / "x"), case_vote=str(tmp_path / "rgb.pt"))
    saved = torch.load(tmp_path / "case_vote.pt", weights_only=True)
    saved["config"]["in_channels"] = 3  # a file whose settings do not fit its contents
    torch.save(saved, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match=r"broken\.pt: not a case vote"):
        run_prediction([str(mixed_folder)], str(deployable), str(tmp_path / "y"), case_vote=str(tmp_path / "broken.pt"))


def test_a_trunk_space_case_vote_fuses_and_lists_its_cases_under_their_own_field(deployable, mixed_folder, tmp_path):
    from tests.test_pretraining import pretrained

    _, trunk = pretrained(tmp_path)  # 1-channel, 16 px: the deployable's input
    row, image, _, vote, ids, out, report = predict_with_a_fitted_vote(deployable, mixed_folder, tmp_path, space="trunk", pretrained_trunk=str(trunk))
    assert report["space"] == "trunk" and report["pretrained_trunk"] == str(trunk) and report["size"] is None
    nearest, cosines = vote.nearest(image)
    assert [c["sample_id"] for c in row["trunk_similar_cases"]] == (ids[nearest[0, :3]]).tolist() and row["pixel_similar_cases"] == []
    assert [c["cosine"] for c in row["trunk_similar_cases"]] == pytest.approx(cosines[0, :3].tolist(), abs=1e-4)
    table = read_csv(out / "predictions.csv")[0]
    assert table["trunk_similar_cases"].count(":train/case_") == 3 and table["pixel_similar_cases"] == ""
    # a trunk pre-trained at another size cannot serve this model: refused naming the file
    from medmem.engine.case_vote import save_case_vote
    from medmem.memory.trunk_vote import TrunkCaseVote

    other = TrunkCaseVote(3, {**vote.trunk_config, "img_size": [32, 32]})
    save_case_vote(other, {}, tmp_path / "big.pt")
    with pytest.raises(ValueError, match=r"big\.pt: this case vote's trunk takes \[32, 32\] images, the model \[16, 16\]"):
        run_prediction([str(mixed_folder)], str(deployable), str(tmp_path / "z"), case_vote=str(tmp_path / "big.pt"))
