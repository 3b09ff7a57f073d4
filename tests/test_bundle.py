"""The MONAI bundle end to end through ``python -m monai.bundle`` subprocesses, on a real regime."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "bundles" / "movit_classification"
CONFIGS = BUNDLE / "configs"
TINY = {
    "dataset": "pbc_blood_cells_96", "regime": 1, "image_size": 32, "patch_size": 8, "hidden_size": 32,
    "mlp_dim": 64, "num_layers": 2, "num_heads": 2, "memory_k": 8, "num_prototypes": 16, "batch_size": 32,
    "cache_workers": 0,
}  # fmt: skip


def bundle(verb: str, configs: list[str], overrides: dict, cwd: Path = REPO, env: dict | None = None, check: bool = True, **popen) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", verb] + (["network_def"] if verb in ("ckpt_export", "verify_net_in_out") else [])
    cmd += ["--config_file", json.dumps([str(CONFIGS / c) for c in configs])]
    if verb == "run":
        cmd += ["--bundle_root", str(BUNDLE)]
    for key, value in overrides.items():
        cmd += [f"--{key}", json.dumps(value) if isinstance(value, (list, bool)) else str(value)]
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env or os.environ.copy(), timeout=600)
    assert result.returncode == 0 or not check, f"{' '.join(cmd)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("bundle")
    overrides = {**TINY, "output_dir": str(out), "epochs": 2}
    bundle("run", ["train.json"], overrides)
    return out, overrides


def test_train_writes_checkpoints_with_memory(trained):
    out, _ = trained
    models = out / "models"
    assert (models / "checkpoint_epoch=2.pt").exists() and (models / "model_full.pt").exists()
    last = torch.load(models / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=False)
    assert set(last) >= {"model", "optimizer", "trainer", "lr_scheduler"}
    assert last["trainer"]["iteration"] == 2 * last["trainer"]["epoch_length"]
    n_regime = len(json.loads((REPO / "data_manifests/pbc_blood_cells_96.json").read_text())["regimes"]["1"])
    written = int(last["model"]["blocks.1.attn.memory.num_rows"])
    assert written == n_regime  # every training image of the regime is in the memory
    assert not list(models.glob(".*"))  # no temporary leftovers


def test_same_seed_trains_the_same_network(trained, tmp_path):
    out, overrides = trained
    bundle("run", ["train.json"], {**overrides, "output_dir": str(tmp_path)})
    first = torch.load(out / "models" / "model_full.pt", map_location="cpu", weights_only=True)
    again = torch.load(tmp_path / "models" / "model_full.pt", map_location="cpu", weights_only=True)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)  # weights and memory, to the bit (same code, threads, machine)


def test_resume_continues_from_last_epoch(trained, tmp_path):
    out, overrides = trained
    models = out / "models"
    # the last checkpoint carries the best-model record; make its best score unbeatable, so that a resumed
    # validation that replaced model_full.pt could only mean the record was not restored
    last = torch.load(models / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    (score, name), = last["best_model_saver"]["_saved"]
    assert 0.0 <= score <= 1.0 and score == last["best_model_saver"]["best_metric"]
    last["best_model_saver"] = {"_saved": [(2.0, name)], "best_metric": 2.0, "best_metric_epoch": 1}
    torch.save(last, models / "checkpoint_epoch=2.pt")
    best_before = (models / "model_full.pt").read_bytes()
    result = bundle("run", ["train.json"], {**overrides, "epochs": 3, "resume": True})
    last = torch.load(models / "checkpoint_epoch=3.pt", map_location="cpu", weights_only=False)
    assert last["trainer"]["iteration"] == 3 * last["trainer"]["epoch_length"]
    assert (models / "model_full.pt").read_bytes() == best_before  # epoch 3 validated below the best: kept
    assert last["best_model_saver"]["_saved"][0][0] == 2.0 and "best value: 2.0 at epoch: 1" in result.stdout + result.stderr
    assert sorted(p.name for p in models.iterdir()) == ["checkpoint_epoch=3.pt", "model_full.pt"]  # epoch 2's was superseded
    from medmem.engine import find_last_checkpoint

    assert find_last_checkpoint(out / "models").endswith("checkpoint_epoch=3.pt")
    assert "Epoch[1]" not in result.stdout + result.stderr  # epochs 1-2 were not run again


def test_weight_average_is_the_best_model_with_the_live_memory_and_resumes(tmp_path, data_root):
    """weight_average_decay > 0: model_full.pt holds the averaged weights beside the memory the trained ones wrote, the
    epoch's checkpoint the trained weights and the average, and a resumed run goes on averaging."""
    models = tmp_path / "models"
    overrides = {**TINY, "output_dir": str(tmp_path), "epochs": 1, "weight_average_decay": 0.9}
    bundle("run", ["train.json"], overrides)
    last = torch.load(models / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=False)
    best = torch.load(models / "model_full.pt", map_location="cpu", weights_only=True)
    averages, trained = last["weight_average"]["averages"], last["model"]
    assert last["weight_average"]["updates"] == last["trainer"]["epoch_length"] > 1
    assert averages.keys() < trained.keys() and best.keys() == trained.keys()
    assert all(torch.equal(best[k], averages[k]) for k in averages)  # validated and kept: the average
    assert any(not torch.equal(trained[k], averages[k]) for k in averages)  # ... which is not the trained weights
    assert all(torch.equal(best[k], trained[k]) for k in trained.keys() - averages.keys())  # buffers: the live memory
    assert int(best["blocks.1.attn.memory.num_rows"]) > 0
    bundle("run", ["train.json"], {**overrides, "epochs": 2, "resume": True})
    last = torch.load(models / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=False)
    assert last["weight_average"]["updates"] == 2 * last["trainer"]["epoch_length"]


def test_evaluate_summarize_export_infer(trained, tmp_path):
    out, overrides = trained
    overrides = {**overrides, "epochs": 3}
    bundle("run", ["train.json", "evaluate.json"], overrides)
    report = json.loads((out / "eval_test_full" / "test_metrics.json").read_text())
    assert report["n"] == 3416 and 0.0 <= report["acc"] <= 1.0 and len(report["confusion_matrix"]) == 8
    assert sum(map(sum, report["confusion_matrix"])) == 3416
    assert (out / "eval_test_full" / "test_confusion.png").stat().st_size > 1000

    # passed on the command line as the text "false" (as a user types it): recorded as false, not as a true string
    bundle("run", ["train.json", "summarize.json"], {**overrides, "summary_epochs": 1, "intensity_augment": False})
    summary = json.loads((out / "summary_report.json").read_text())
    assert summary["summary"]["num_prototypes"] == 16 and summary["summary"]["steps"] > 0
    # the kept prototypes are the better of k-means alone and distilled, on validation
    kept = summary["prototypes_kept"]
    assert kept in ("kmeans", "distilled")
    distilled, kmeans = summary["validation_distilled_prototypes"]["acc"], summary["validation_kmeans_prototypes"]["acc"]
    assert (distilled >= kmeans) if kept == "distilled" else (distilled < kmeans)
    assert summary["validation_prototypes"]["acc"] == summary[f"validation_{kept}_prototypes"]["acc"]
    deploy = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert int(deploy["blocks.1.attn.memory.num_rows"]) == 0  # the full memory is not shipped
    card = json.loads((out / "models" / "model.json").read_text())
    assert card["augmentation"] == {"rotate90": True, "intensity": False}  # the bundle's recipe, for fine-tuning elsewhere
    # validation per memory mode, the weights with the memory off among them, and the best of them
    assert card["validation"]["off"] == summary["validation_memory_off"] and card["validation"]["best"] == summary["best_on_validation"]
    assert card["validation"]["prototypes"] == summary["validation_prototypes"]

    cases = json.loads((out / "models" / "memory_cases.json").read_text())["cases"]
    assert len(cases) == int(deploy_rows := torch.load(out / "models" / "model_full.pt", weights_only=True)["blocks.1.attn.memory.num_rows"])
    assert all(c["case_id"].startswith("pbc_blood_cells_96/") for c in cases.values())
    # write regime 3's other cases into the memory without training (the bundle's memory_add config)
    bundle("run", ["train.json", "memory_add.json"], {**overrides, "memory_add_regime": 3, "memory_user": "ci"})
    manifest = json.loads((REPO / "data_manifests/pbc_blood_cells_96.json").read_text())
    grown = torch.load(out / "models" / "model_full.pt", weights_only=True)["blocks.1.attn.memory.num_rows"]
    assert int(grown) == len(manifest["regimes"]["3"]) and int(grown) > int(deploy_rows)
    audit = [json.loads(line) for line in (out / "models" / "memory_audit.jsonl").read_text().splitlines()]
    assert audit[-1]["action"] == "add" and audit[-1]["user"] == "ci" and audit[-1]["cases"] == int(grown) - int(deploy_rows)
    assert json.loads((out / "models" / "model.json").read_text())["validation"] is None  # scored before the edit
    deploy = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)

    bundle("run", ["train.json", "evaluate.json"], {**overrides, "eval_memory_mode": "prototypes"})
    assert json.loads((out / "eval_test_prototypes" / "test_metrics.json").read_text())["n"] == 3416

    models = out / "models"
    export = {**overrides, "memory_mode": "prototypes", "ckpt_file": models / "model.pt", "filepath": models / "model.ts", "meta_file": CONFIGS / "metadata.json"}
    bundle("ckpt_export", ["train.json"], export, cwd=tmp_path)  # from another directory
    import medmem

    eager = medmem.networks.MemoryViT(3, 32, 8, 8, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2, memory_k=8, num_prototypes=16, memory_mode="prototypes",
                                      memory_match="same_token", memory_retrieval="key", memory_vote=0.5, stem="conv")  # the bundle defaults
    eager.load_state_dict(deploy)
    scripted = torch.jit.load(str(models / "model.ts"))
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(scripted(x), eager.eval()(x))

    folder = tmp_path / "inputs"
    folder.mkdir()
    data_root = Path(os.environ["MEDMEM_DATA_ROOT"])
    (folder / "a.jpg").symlink_to(data_root / "pbc_blood_cells_96/platelet" / sorted(os.listdir(data_root / "pbc_blood_cells_96/platelet"))[0])
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    bundle("run", ["train.json", "inference.json"], {**overrides, "input_paths": [str(folder)]})
    rows = (out / "inference" / "predictions.csv").read_text().splitlines()
    errors = (out / "inference" / "errors.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith(str(folder / "a.jpg"))
    probs = [float(v) for v in rows[1].split(",")[2:]]
    assert len(probs) == 8 and abs(sum(probs) - 1) < 1e-4
    assert len(errors) == 2 and "broken.png" in errors[1]


def test_case_vote_is_weighed_on_validation_and_fused_into_evaluation(trained):
    out, overrides = trained
    overrides = {**overrides, "epochs": 3}
    bundle("run", ["train.json", "case_vote.json"], overrides)
    report = json.loads((out / "case_vote_report.json").read_text())
    manifest = json.loads((REPO / "data_manifests/pbc_blood_cells_96.json").read_text())
    assert report["training_images"] == len(manifest["regimes"]["1"]) and report["validation_images"] == len(manifest["validation"])
    accs = {float(w): s["acc"] for w, s in report["validation"].items()}
    assert report["weight"] in accs and accs[report["weight"]] == max(accs.values())  # the weight validation prefers
    assert not list((out / "models").glob(".*"))  # written under a temporary name, then renamed

    bundle("run", ["train.json", "evaluate.json"], {**overrides, "case_vote": "true"})
    fused = json.loads((out / "eval_test_full_case_vote" / "test_metrics.json").read_text())
    # the same numbers by hand: the trained network's softmax fused with the saved vote on the test images
    import medmem
    from medmem.engine.case_vote import load_case_vote_file, network_probabilities, save_case_vote

    net = medmem.networks.MemoryViT(3, 32, 8, 8, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2, memory_k=8, num_prototypes=16, memory_mode="full",
                                    memory_match="same_token", memory_retrieval="key", memory_vote=0.5, stem="conv")  # the bundle defaults
    net.load_state_dict(torch.load(out / "models" / "model_full.pt", map_location="cpu", weights_only=True))
    chain = medmem.data.eval_transforms(32, 3)
    items = medmem.data.load_datalist(medmem.engine.resolve_manifest("pbc_blood_cells_96"), "test", None)
    x = torch.stack([chain({"image": d["image"]})["image"] for d in items])
    vote, cases = load_case_vote_file(str(out / "models" / "case_vote.pt"))
    assert float(vote.weight) == report["weight"]
    # every stored case is named by its training item (for medmem predict --case-vote)
    train_items = {d["sample_id"]: d for d in medmem.data.load_datalist(medmem.engine.resolve_manifest("pbc_blood_cells_96"), "training", None, 1)}
    assert sorted(vote.sample_ids.tolist()) == sorted(train_items) and set(cases) == {str(i) for i in train_items}
    assert all(cases[str(i)]["case_id"] == d["case_id"] and cases[str(i)]["label"] == manifest["classes"][d["label"]] for i, d in train_items.items())
    by_hand = medmem.engine.classification_metrics(vote(network_probabilities(net, x), x).numpy(), [d["label"] for d in items], 8)
    assert fused["n"] == len(items) and fused["case_vote"] is True
    assert fused["acc"] == pytest.approx(by_hand["acc"], abs=1e-6) and fused["auc"] == pytest.approx(by_hand["auc"], abs=1e-6)

    # evaluation averaged over the 8 flips and turns (eval_dihedral), alone and under the case vote, against the same by hand
    from medmem.engine.dihedral import dihedral_probabilities

    with torch.no_grad():
        averaged = torch.cat([dihedral_probabilities(net.eval(), x[i : i + 128]) for i in range(0, len(x), 128)])  # as the bundle batches
    bundle("run", ["train.json", "evaluate.json"], {**overrides, "eval_dihedral": "true"})
    report_d = json.loads((out / "eval_test_full_dihedral" / "test_metrics.json").read_text())
    by_hand_d = medmem.engine.classification_metrics(averaged.numpy(), [d["label"] for d in items], 8)
    assert report_d["dihedral"] is True and report_d["acc"] == pytest.approx(by_hand_d["acc"], abs=1e-6)
    assert report_d["auc"] == pytest.approx(by_hand_d["auc"], abs=1e-6)
    bundle("run", ["train.json", "evaluate.json"], {**overrides, "case_vote": "true", "eval_dihedral": "true"})
    fused_d = json.loads((out / "eval_test_full_case_vote_dihedral" / "test_metrics.json").read_text())
    by_hand_fd = medmem.engine.classification_metrics(vote(averaged, x).numpy(), [d["label"] for d in items], 8)
    assert fused_d["acc"] == pytest.approx(by_hand_fd["acc"], abs=1e-6) and fused_d["auc"] == pytest.approx(by_hand_fd["auc"], abs=1e-6)
    if report["weight"] > 0:  # the inferer was used: the plain network alone scores otherwise
        alone = medmem.engine.classification_metrics(network_probabilities(net, x).numpy(), [d["label"] for d in items], 8)
        assert (alone["acc"], alone["auc"]) != (fused["acc"], fused["auc"])
    # folder inference with the vote (from the full checkpoint, which the weight was chosen against), at a weight set here
    vote.weight.fill_(0.5)
    save_case_vote(vote, cases, out / "models" / "case_vote.pt")
    folder = out / "vote_inputs"
    folder.mkdir()
    (folder / "a.jpg").symlink_to(Path(items[0]["image"]))
    bundle("run", ["train.json", "inference.json"], {**overrides, "inference_memory_mode": "full", "inference_case_vote": "true", "input_paths": [str(folder)]})
    row = (out / "inference" / "predictions.csv").read_text().splitlines()[1].split(",")
    one = x[:1]
    torch.testing.assert_close(torch.tensor([float(v) for v in row[2:]]), vote(network_probabilities(net, one), one)[0], atol=1e-4, rtol=0)
    # the same with the network's softmax averaged over the 8 flips and turns (inference_dihedral)
    bundle("run", ["train.json", "inference.json"], {**overrides, "inference_memory_mode": "full", "inference_case_vote": "true", "inference_dihedral": "true",
                                                     "input_paths": [str(folder)]})  # fmt: skip
    row = (out / "inference" / "predictions.csv").read_text().splitlines()[1].split(",")
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor([float(v) for v in row[2:]]), vote(dihedral_probabilities(net, one), one)[0], atol=1e-4, rtol=0)


def test_pseudo_label_writes_a_self_training_manifest_that_the_bundle_trains_on(trained, tmp_path):
    out, overrides = trained
    import numpy as np

    import medmem
    from medmem.data.pseudo_labels import class_quota_selection
    from medmem.engine.dihedral import dihedral_probabilities

    # a small source manifest: the tiny network's regime-1 images labelled, 60 more training images unlabelled
    full = json.loads((REPO / "data_manifests/pbc_blood_cells_96.json").read_text())
    labelled = full["regimes"]["1"]
    rest = [i for i in range(len(full["training"])) if i not in set(labelled)][:60]
    source = {**full, "training": [full["training"][i] for i in labelled + rest], "regimes": {"1": list(range(len(labelled)))}}
    (tmp_path / "source.json").write_text(json.dumps(source))
    net = medmem.networks.MemoryViT(3, 32, 8, 8, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2, memory_k=8, num_prototypes=16, memory_mode="full",
                                    memory_match="same_token", memory_retrieval="key", memory_vote=0.5, stem="conv")  # the bundle defaults
    net.load_state_dict(torch.load(out / "models" / "model_full.pt", map_location="cpu", weights_only=True))
    chain = medmem.data.eval_transforms(32, 3)
    items = medmem.data.load_datalist(source, "training", None)[len(labelled) :]
    with torch.no_grad():
        probs = dihedral_probabilities(net.eval(), torch.stack([chain({"image": d["image"]})["image"] for d in items])).numpy()
    # about half of them join: the middle of the widest gap between the middle 20 confidences, so that float noise
    # between this computation and the bundle's cannot move an image across the threshold
    conf = np.sort(probs.max(1))[20:40]
    gap = int(np.argmax(np.diff(conf)))
    threshold = float(conf[gap] + conf[gap + 1]) / 2
    manifest = tmp_path / "pseudo.json"
    scores = tmp_path / "scores.npz"
    selection = {**overrides, "dataset": str(tmp_path / "source.json"), "pseudo_scores": str(scores)}
    bundle("run", ["train.json", "pseudo_label.json"], {**selection, "pseudo_manifest": str(manifest), "pseudo_threshold": threshold})
    derived = json.loads(manifest.read_text())
    joined = [e for e in derived["training"] if e["pseudo_label"]]
    expect = [(e["image"], int(p.argmax())) for e, p in zip(source["training"][len(labelled) :], probs) if p.max() >= threshold]
    assert 0 < len(joined) < len(rest) and len(derived["training"]) == len(labelled) + len(joined)
    assert [(e["image"], e["label"]) for e in joined] == expect  # the teacher's class, never the true label
    summary = json.loads(manifest.with_suffix(".summary.json").read_text())
    assert summary["pseudo_labelled"] == len(joined) and summary["unlabelled"] == len(rest) and summary["labelled"] == len(labelled)
    assert summary["teacher_top_probability"]["max"] == pytest.approx(float(probs.max()), abs=1e-5)
    assert not list(tmp_path.glob(".*"))  # written under temporary names, then renamed
    saved = dict(np.load(scores))
    np.testing.assert_allclose(saved["probabilities"], probs, rtol=0, atol=1e-5)

    # a class quota selects from the saved scores: doctored ones (same teacher and images) are what it reads
    doctored = np.random.default_rng(0).dirichlet(np.ones(probs.shape[1]), len(rest))
    np.savez(scores, **{**saved, "probabilities": doctored})
    by_quota = tmp_path / "quota.json"
    bundle("run", ["train.json", "pseudo_label.json"], {**selection, "pseudo_manifest": str(by_quota), "pseudo_threshold": 0, "pseudo_class_quota": 0.5})
    keep = class_quota_selection(doctored, [e["label"] for e in source["training"][: len(labelled)]], 0.5)
    expect = [(e["image"], int(p.argmax())) for e, p, k in zip(source["training"][len(labelled) :], doctored, keep) if k]
    assert 0 < len(expect) < len(rest)
    assert [(e["image"], e["label"]) for e in json.loads(by_quota.read_text())["training"] if e["pseudo_label"]] == expect

    # the student trains on every image of the derived manifest: each one is written into its memory
    student = tmp_path / "student"
    bundle("run", ["train.json"], {**overrides, "dataset": str(manifest), "regime": 100, "epochs": 1, "output_dir": str(student)})
    last = torch.load(student / "models" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=False)
    assert int(last["model"]["blocks.1.attn.memory.num_rows"]) == len(derived["training"])
    # its memory tables and model card say which stored cases a teacher labelled, for the evidence predictions show
    bundle("run", ["train.json", "summarize.json"], {**overrides, "dataset": str(manifest), "regime": 100, "epochs": 1, "output_dir": str(student),
                                                     "summary_epochs": 1})  # fmt: skip
    flag = {e["image"]: e["pseudo_label"] for e in derived["training"]}
    stored = json.loads((student / "models" / "memory_cases.json").read_text())["cases"]
    assert len(stored) == len(flag) and all(c["pseudo_label"] == flag[c["case_id"]] for c in stored.values())
    card = json.loads((student / "models" / "model.json").read_text())["training_cases"]
    assert card and all(pseudo == flag[case_id] for case_id, _, pseudo in card.values())


def test_pixel_retrieval_trains_with_the_regime_in_its_index_and_evaluates_from_the_checkpoint(tmp_path, data_root):
    overrides = {**TINY, "output_dir": str(tmp_path), "epochs": 1, "memory_retrieval": "pixels", "pixel_size": 8}
    bundle("run", ["train.json"], overrides)
    bundle("run", ["train.json", "evaluate.json"], overrides)
    state = torch.load(tmp_path / "models" / "model_full.pt", map_location="cpu", weights_only=True)
    import medmem

    train_items = medmem.data.load_datalist(medmem.engine.resolve_manifest("pbc_blood_cells_96"), "training", None, 1)
    # every training image of the regime, un-augmented, by its sample id
    assert sorted(state["pixel_index.sample_ids"].tolist()) == sorted(d["sample_id"] for d in train_items)
    net = medmem.networks.MemoryViT(3, 32, 8, 8, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2, memory_k=8, num_prototypes=16, memory_mode="full", memory_match="same_token",
                                    memory_retrieval="pixels", pixel_size=8, memory_vote=0.5, stem="conv")  # fmt: skip
    net.load_state_dict(state)
    chain = medmem.data.eval_transforms(32, 3)
    first = train_items[0]
    position = state["pixel_index.sample_ids"].tolist().index(first["sample_id"])
    torch.testing.assert_close(state["pixel_index.bank"][position], net.pixel_index.descriptors(chain({"image": first["image"]})["image"][None])[0])
    # evaluation read the memory through the saved index: its numbers are this network's, by hand
    items = medmem.data.load_datalist(medmem.engine.resolve_manifest("pbc_blood_cells_96"), "test", None)
    x = torch.stack([chain({"image": d["image"]})["image"] for d in items])
    by_hand = medmem.engine.classification_metrics(medmem.engine.case_vote.network_probabilities(net, x).numpy(), [d["label"] for d in items], 8)
    report = json.loads((tmp_path / "eval_test_full" / "test_metrics.json").read_text())
    assert report["acc"] == pytest.approx(by_hand["acc"], abs=1e-6) and report["auc"] == pytest.approx(by_hand["auc"], abs=1e-6)
    # no prototype mode: a folder of images is predicted from the full checkpoint, by its pixel neighbours
    folder = tmp_path / "inputs"
    folder.mkdir()
    image = folder / ("a" + Path(items[0]["image"]).suffix)
    image.symlink_to(Path(items[0]["image"]))
    bundle("run", ["train.json", "inference.json"], {**overrides, "inference_memory_mode": "full", "input_paths": [str(folder)]})
    row = (tmp_path / "inference" / "predictions.csv").read_text().splitlines()[1].split(",")
    expected = medmem.engine.case_vote.network_probabilities(net, chain({"image": str(image)})["image"][None])[0]
    torch.testing.assert_close(torch.tensor([float(v) for v in row[2:]]), expected, atol=1e-4, rtol=0)


def test_checkpoint_interval_follows_validation_and_keeps_the_final_epoch(tmp_path, data_root):
    """The last checkpoint is written with each validation (default checkpoint_interval = val_interval) and at the end."""
    out = tmp_path / "run"
    result = bundle("run", ["train.json"], {**TINY, "output_dir": str(out), "epochs": 3, "val_interval": 2})
    log = result.stdout + result.stderr
    assert "Saved checkpoint at epoch: 2" in log and "Saved checkpoint at epoch: 3" in log and "Saved checkpoint at epoch: 1" not in log
    assert sorted(p.name for p in (out / "models").iterdir()) == ["checkpoint_epoch=3.pt", "model_full.pt"]
    refused = bundle("run", ["train.json"], {**TINY, "output_dir": str(tmp_path / "refused"), "epochs": 3, "val_interval": 2, "checkpoint_interval": 3}, check=False)
    assert refused.returncode != 0 and "checkpoint_interval 3 must be a positive divisor of val_interval 2" in refused.stderr


def test_verify_net_in_out(data_root):
    bundle("verify_net_in_out", ["train.json"], {"meta_file": CONFIGS / "metadata.json"})


@pytest.mark.slow
def test_kill_mid_training_then_resume(tmp_path, data_root):
    """SIGKILL during a run of 30 epochs; --resume finishes from the last saved epoch; the best model survives."""
    out = tmp_path / "run"
    overrides = {**TINY, "regime": 3, "output_dir": str(out), "epochs": 30}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps([str(CONFIGS / "train.json")]), "--bundle_root", str(BUNDLE)]
    for k, v in overrides.items():
        cmd += [f"--{k}", str(v)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 500
    while not (out / "models" / "checkpoint_epoch=2.pt").exists() and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    from medmem.engine import find_last_checkpoint

    killed_at = find_last_checkpoint(out / "models")
    assert (out / "models" / "model_full.pt").exists() and not killed_at.endswith("epoch=30.pt")
    torch.load(out / "models" / "model_full.pt", map_location="cpu", weights_only=True)  # whole, loadable
    assert not list((out / "models").glob(".*"))  # no half-written file left behind
    result = bundle("run", ["train.json"], {**overrides, "resume": True})
    assert "Epoch[1]" not in result.stdout + result.stderr
    last = torch.load(out / "models" / "checkpoint_epoch=30.pt", map_location="cpu", weights_only=False)
    assert last["trainer"]["iteration"] == 30 * last["trainer"]["epoch_length"]


@pytest.mark.slow
def test_torchrun_two_processes_writes_one_checkpoint(tmp_path, data_root):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "monai.bundle", "run", "--config_file",
           json.dumps([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")]), "--bundle_root", str(BUNDLE)]  # fmt: skip
    for k, v in {**TINY, "output_dir": str(out), "epochs": 2}.items():
        cmd += [f"--{k}", str(v)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in (out / "models").iterdir()) == ["checkpoint_epoch=2.pt", "model_full.pt"]
    state = torch.load(out / "models" / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=False)
    n_regime = len(json.loads((REPO / "data_manifests/pbc_blood_cells_96.json").read_text())["regimes"]["1"])
    assert int(state["model"]["blocks.1.attn.memory.num_rows"]) == n_regime  # ignite saves the unwrapped module


@pytest.mark.slow
def test_mlflow_tracking_to_a_local_sqlite_store(tmp_path, data_root):
    mlflow = pytest.importorskip("mlflow", reason="pip install 'medmem[tracking]'")
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    bundle("run", ["train.json"], {**TINY, "output_dir": str(tmp_path / "run"), "epochs": 1, "tracking": "mlflow", "tracking_uri": uri})
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == 1 and "metrics.val_acc" in runs.columns and "metrics.memory_samples" in runs.columns
