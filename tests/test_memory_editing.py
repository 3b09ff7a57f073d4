"""Memory edits at the site: add without a gradient step, relabel, forget (provably gone), audit log."""

from __future__ import annotations

import json

import pytest
import torch

from medmem.engine.batch_predict import load_deployable
from medmem.engine.summarize import write_model_card
from medmem.memory.editing import MemoryEditError, ModelDirectory, case_hash
from medmem.networks import MemoryViT

CLASSES = ["a", "b", "c"]


def make_model_dir(tmp_path, n: int = 12, augmentation: dict | None = None, **kw):
    torch.manual_seed(0)
    net = MemoryViT(1, 16, 4, 3, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2, memory_k=4, num_prototypes=4, **kw)
    x, y = torch.randn(n, 1, 16, 16), torch.arange(n) % 3
    net.write_memory(x, torch.arange(n), y)
    torch.save(net.state_dict(), tmp_path / "model_full.pt")
    write_model_card(net, str(tmp_path / "model.json"), CLASSES, {}, None, augmentation)
    return ModelDirectory(tmp_path, user="tester")


def new_items(n: int, label: int = 1, prefix: str = "site/case"):
    g = torch.Generator().manual_seed(7)
    return [{"image": torch.randn(1, 16, 16, generator=g), "label": label, "case_id": f"{prefix}{i}.png"} for i in range(n)]


def audit(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "memory_audit.jsonl").read_text().splitlines()]


def test_add_writes_cases_without_touching_weights(tmp_path):
    md = make_model_dir(tmp_path)
    weights = {k: v.clone() for k, v in md.network.named_parameters()}
    before = md.checksum()
    report = md.add(new_items(5), source="site-batch-1")
    assert report["added"] == 5 and report["skipped"] == 0
    assert md.memory.num_written == 17
    assert md.listing()["per_class"]["b"] == 4 + 5
    assert md.checksum() != before
    assert all(torch.equal(v, weights[k]) for k, v in md.network.named_parameters())
    assert md.add(new_items(5), source="again")["skipped"] == 5  # same case ids: not written twice
    added = [c for c in md.listing()["cases"] if c["source"] == "site-batch-1"]
    assert {c["case_id"] for c in added} == {f"site/case{i}.png" for i in range(5)}


def test_forget_removes_the_case_everywhere_and_is_audited(tmp_path):
    md = make_model_dir(tmp_path)
    md.add(new_items(3, label=2), source="site")
    md.save()
    before_net, before_card = load_deployable(str(tmp_path / "model.pt"))
    members_before = {int(i) for layer in before_net.memory_layers() for i in layer.proto_members.flatten().tolist()}
    target = next(c for c in reversed(md.listing()["cases"]) if c["sample_id"] in members_before)  # a case the prototypes carry
    sid = target["sample_id"]
    assert str(sid) in before_card["training_cases"]
    checksum_before = md.checksum()
    assert md.forget([target["case_id"]]) == 1
    md.save()
    reloaded = ModelDirectory(tmp_path)
    assert sid not in reloaded.memory.row_ids.tolist()
    assert target["case_id"] not in {c["case_id"] for c in reloaded.listing()["cases"]}
    assert reloaded.checksum() != checksum_before
    deployable, card = load_deployable(str(tmp_path / "model.pt"))
    members = {int(i) for layer in deployable.memory_layers() for i in layer.proto_members.flatten().tolist()}
    assert sid not in members and str(sid) not in card["training_cases"]
    # it never comes back as a similar case, whatever is asked
    layer = deployable.memory_layers()[0]
    layer.record_evidence = True
    deployable(torch.randn(16, 1, 16, 16))
    assert sid not in layer.evidence["sample_ids"].flatten().tolist()
    log = audit(tmp_path)
    assert [e["action"] for e in log] == ["add", "forget"]
    assert log[-1]["case_hashes"] == [case_hash(target["case_id"])] and log[-1]["user"] == "tester"
    assert log[-1]["checksum_before"] == checksum_before and log[-1]["checksum_after"] == reloaded.checksum()
    assert target["case_id"] not in (tmp_path / "memory_audit.jsonl").read_text()  # ids only as hashes


def test_relabel_changes_the_stored_label_and_refuses_unknown(tmp_path):
    md = make_model_dir(tmp_path, memory_labels=True)
    md.add(new_items(2, label=0), source="site")
    md.relabel(["site/case0.png"], "c")
    row = md.memory.id_to_row[md._ids_of(["site/case0.png"])["site/case0.png"]]
    assert int(md.memory.row_labels[row]) == 2
    assert {c["case_id"]: c["class"] for c in md.listing()["cases"]}["site/case0.png"] == "c"
    with pytest.raises(MemoryEditError, match="unknown class"):
        md.relabel(["site/case0.png"], "zebra")
    with pytest.raises(MemoryEditError, match="not in this memory: nope.png"):
        md.forget(["nope.png"])
    with pytest.raises(MemoryEditError, match="label 7"):
        md.add([{"image": torch.zeros(1, 16, 16), "label": 7, "case_id": "x.png"}], source="s")


def test_pseudo_labelled_cases_are_listed_as_such_until_a_person_relabels_them(tmp_path):
    md = make_model_dir(tmp_path, memory_labels=True)
    items = new_items(3, label=0)
    items[0]["pseudo_label"] = items[2]["pseudo_label"] = True  # from a self-training manifest: a teacher network's class
    items[1]["pseudo_label"] = False
    md.add(items, source="self-training")
    flags = {c["case_id"]: c["pseudo_label"] for c in md.listing()["cases"] if c["case_id"].startswith("site/")}
    assert flags == {"site/case0.png": True, "site/case1.png": False, "site/case2.png": True} and md.listing()["pseudo_labelled"] == 2
    md.relabel(["site/case0.png"], "a")  # a person confirms the class: no longer a pseudo-label, even unchanged
    md.save()
    listed = {c["case_id"]: c for c in md.listing()["cases"]}
    assert not listed["site/case0.png"]["pseudo_label"] and listed["site/case2.png"]["pseudo_label"]
    # the saved case table and the model card carry the flag of every case they name
    saved = json.loads((tmp_path / "memory_cases.json").read_text())["cases"]
    assert {c["case_id"]: c["pseudo_label"] for c in saved.values() if c["case_id"].startswith("site/")} == {
        "site/case0.png": False, "site/case1.png": False, "site/case2.png": True}  # fmt: skip
    card = json.loads((tmp_path / "model.json").read_text())["training_cases"]
    assert card and all(flag == saved[sid].get("pseudo_label", False) for sid, (_, _, flag) in card.items())


@pytest.mark.parametrize("method", ["kmeans", "assign"])
def test_refreshed_prototypes_follow_the_added_cases(tmp_path, method):
    """Adding many cases of one class moves the prototypes' members towards them, either method."""
    md = make_model_dir(tmp_path, memory_match="same_token")
    md.save()
    md.add(new_items(40, label=1), source="site")
    md.save(refresh=method)
    net, card = load_deployable(str(tmp_path / "model.pt"))
    members = {int(i) for layer in net.memory_layers() for i in layer.proto_members.flatten().tolist() if i >= 0}
    assert any(i >= 12 for i in members)
    assert any(name.startswith("site/") for name, *_ in card["training_cases"].values())
    assert net.memory_size() == 0  # the deployable carries prototypes only


def test_missing_model_card_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.json"):
        (tmp_path / "model_full.pt").write_bytes(b"")
        ModelDirectory(tmp_path)


def test_cli_add_folder_list_relabel_forget(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from medmem.cli import main

    model_dir = tmp_path / "models"
    model_dir.mkdir()
    make_model_dir(model_dir).save()
    site = tmp_path / "site"
    rng = np.random.default_rng(0)
    for name in ("a", "c"):
        (site / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(site / name / f"img{i}.png")
    (site / "c" / "broken.png").write_bytes(b"not a png")
    assert main(["memory", "add", str(model_dir), "--folder", str(site), "--user", "nurse1"]) == 1  # one bad file
    out, err = capsys.readouterr()
    assert "added 6 cases" in out and "site/c/broken.png" in err
    assert main(["memory", "list", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "18 cases in memory" in out and "a: 7" in out and "c: 7" in out and "folder:site 6" in out
    assert main(["memory", "relabel", str(model_dir), "site/a/img0.png", "--to", "b"]) == 0
    assert main(["memory", "forget", str(model_dir), "site/c/img1.png", "site/c/img2.png"]) == 0
    capsys.readouterr()
    assert main(["memory", "list", str(model_dir), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["per_class"] == {"a": 6, "b": 5, "c": 5}  # 4+3-1, 4+1, 4+3-2
    assert [e["action"] for e in audit(model_dir)] == ["add", "relabel", "forget"]
    assert audit(model_dir)[0]["user"] == "nurse1" and audit(model_dir)[0]["skipped_already_held"] == 0
    assert main(["memory", "forget", str(model_dir), "site/c/img1.png"]) == 2  # already gone: clear error
    assert "not in this memory: site/c/img1.png" in capsys.readouterr().err
    assert main(["memory", "add", str(model_dir), "--folder", str(tmp_path / "nowhere")]) == 2
    capsys.readouterr()
    # re-choose the vote weight on held-out cases (the same folder here): bad file reported, the rest used
    assert main(["memory", "tune-vote", str(model_dir), "--folder", str(site)]) == 1
    out, err = capsys.readouterr()
    assert "chosen on 6 held-out cases" in out and "w=0.9" in out and "site/c/broken.png" in err
    assert audit(model_dir)[-1]["action"] == "tune_vote"
    chosen = audit(model_dir)[-1]["vote_weight"]
    assert json.loads((model_dir / "model.json").read_text())["network"]["memory_vote"] == chosen


def test_choose_vote_weight_follows_whichever_is_right():
    from medmem.memory.vote import choose_vote_weight

    labels = torch.tensor([0, 1, 2, 0])
    right = torch.nn.functional.one_hot(labels, 3).float() * 0.8 + 0.2 / 3
    wrong = torch.nn.functional.one_hot((labels + 1) % 3, 3).float() * 0.8 + 0.2 / 3
    w, scores = choose_vote_weight(wrong, right, labels)  # head wrong, vote right
    assert w > 0.5 and scores[w]["acc"] == 1.0 and scores[0.0]["acc"] == 0.0
    w, scores = choose_vote_weight(right, wrong, labels)  # head right, vote wrong
    assert w == 0.0 and scores[0.0]["acc"] == 1.0 and scores[0.9]["acc"] == 0.0
    with pytest.raises(ValueError):
        choose_vote_weight(right, wrong, labels, grid=[1.0])


def test_tune_vote_weight_is_saved_audited_and_matches_the_model_output(tmp_path):
    from medmem.memory.vote import fused, head_and_vote

    md = make_model_dir(tmp_path, memory_match="same_token", memory_retrieval="key", memory_vote=0.1)
    g = torch.Generator().manual_seed(11)
    protos = torch.randn(3, 1, 16, 16, generator=g) * 3  # three well-separated kinds of image, one per class
    cases = [{"image": protos[c] + 0.1 * torch.randn(1, 16, 16, generator=g), "label": c, "case_id": f"site/{c}-{i}"} for c in range(3) for i in range(6)]
    md.add(cases, source="site")
    held_out = [{"image": protos[c] + 0.1 * torch.randn(1, 16, 16, generator=g), "label": c} for c in range(3) for _ in range(4)]
    report = md.tune_vote_weight(held_out)
    assert report["previous"] == pytest.approx(0.1) and report["cases"] == 12
    w = report["weight"]
    best = max(s["acc"] for s in report["scores"].values())
    assert report["scores"][w]["acc"] == best
    x = torch.stack([it["image"] for it in held_out])
    head, vote = head_and_vote(md.network, x)
    torch.testing.assert_close(md.network(x).exp(), fused(head, vote, w).clamp(min=1e-8))
    md.save()
    assert json.loads((tmp_path / "model.json").read_text())["network"]["memory_vote"] == w
    net, _ = load_deployable(str(tmp_path / "model.pt"))
    assert net.memory_vote == w
    entry = audit(tmp_path)[-1]
    assert entry["action"] == "tune_vote" and entry["vote_weight"] == w and entry["held_out_cases"] == 12
    with pytest.raises(MemoryEditError):
        md.tune_vote_weight([])


def test_tune_vote_keeps_a_vote_combiner_model_loadable(tmp_path):
    """Where the head alone is best, tune-vote would pick w = 0; a ``vote``-combiner network cannot be
    rebuilt with w = 0, so the smallest positive weight is chosen and the saved checkpoint loads."""
    from medmem.memory.vote import head_and_vote

    md = make_model_dir(tmp_path, memory_match="same_token", memory_retrieval="key", memory_vote=0.5, combiner="vote")
    x = torch.randn(9, 1, 16, 16)
    head, _ = head_and_vote(md.network, x)
    held_out = [{"image": x[i], "label": int(head[i].argmax())} for i in range(9)]  # labels = the head's own calls
    report = md.tune_vote_weight(held_out)
    assert 0.0 not in report["scores"] and report["weight"] == min(report["scores"]) == 0.1
    md.save()
    net, card = load_deployable(str(tmp_path / "model.pt"))
    assert card["network"]["memory_vote"] == net.memory_vote == 0.1


def test_fine_tuning_transforms_follow_the_card_and_survive_a_save(tmp_path):
    (tmp_path / "old").mkdir()
    old = make_model_dir(tmp_path / "old")  # a card without the recipe: the earlier fine-tuning chain
    names = [type(t).__name__ for t in old.train_transforms.transforms]
    assert "RandRotate90d" in names and "RandAdjustContrastd" not in names
    (tmp_path / "xray").mkdir()
    xray = make_model_dir(tmp_path / "xray", augmentation={"rotate90": False, "intensity": True})
    names = [type(t).__name__ for t in xray.train_transforms.transforms]
    assert "RandRotate90d" not in names and {"RandAdjustContrastd", "RandScaleIntensityd"} <= set(names)
    xray.add(new_items(2), source="site")
    xray.save()  # rewrites the card: the recipe must still be there
    assert json.loads((tmp_path / "xray" / "model.json").read_text())["augmentation"] == {"rotate90": False, "intensity": True}


@pytest.mark.parametrize("space", ["pixels", "trunk"])
def test_the_case_vote_follows_every_edit_and_an_unnamed_one_refuses_them(tmp_path, space):
    from medmem.engine.case_vote import load_case_vote_file, save_case_vote
    from medmem.memory.pixel_vote import PixelCaseVote
    from medmem.memory.trunk_vote import TrunkCaseVote
    from tests.test_pretraining import pretrained

    md = make_model_dir(tmp_path)
    torch.manual_seed(5)
    # pixels: 8-px thumbnails; trunk: the class-token features of a (1-channel, 16-px) pre-trained trunk
    vote = PixelCaseVote(3, 1, size=8, k=3) if space == "pixels" else TrunkCaseVote.from_trunk_file(pretrained(tmp_path / "trunk")[1], 3, k=3)
    vote.fit(torch.randn(12, 1, 16, 16), torch.arange(12) % 3, torch.arange(12))
    save_case_vote(vote, {str(i): md.cases[str(i)] for i in range(12)}, tmp_path / "case_vote.pt")
    md = ModelDirectory(tmp_path, user="tester")
    items = new_items(3, label=2)
    md.add(items, source="site")
    md.relabel(["site/case0.png"], "a")
    md.forget(["site/case1.png", "sample-3"])
    md.save()
    saved, cases = load_case_vote_file(str(tmp_path / "case_vote.pt"))
    held = dict(zip(saved.sample_ids.tolist(), saved.labels.tolist()))
    new = md._ids_of(["site/case0.png", "site/case2.png"])
    assert set(held) == set(range(12)) - {3} | set(new.values())  # site/case1.png and sample-3 are gone
    assert held[new["site/case0.png"]] == 0 and held[new["site/case2.png"]] == 2  # relabelled, and added with its class
    assert cases[str(new["site/case2.png"])]["case_id"] == "site/case2.png" and set(cases) == {str(s) for s in held}
    index, _ = saved.nearest(items[2]["image"][None])
    assert int(saved.sample_ids[index[0, 0]]) == new["site/case2.png"]  # an added case is found by its own image
    # the audit's checksums cover the case vote: the last one is what a reload of the saved directory finds
    assert audit(tmp_path)[-1]["checksum_after"] == ModelDirectory(tmp_path).checksum()
    reloaded = ModelDirectory(tmp_path)
    reloaded.case_vote.labels[0] = 1 - reloaded.case_vote.labels[0]
    assert reloaded.checksum() != audit(tmp_path)[-1]["checksum_after"]

    assert type(saved) is type(vote)
    if space == "trunk":  # case votes without sample ids predate the trunk space (bundle 0.9.0)
        return
    # a case vote whose cases carry no sample ids (fitted before bundle 0.6.0) cannot follow: edits are refused
    torch.save({"config": vote.config, "state_dict": {k: v for k, v in vote.state_dict().items() if k != "sample_ids"}}, tmp_path / "case_vote.pt")
    unnamed = ModelDirectory(tmp_path, user="tester")
    for edit in (lambda: unnamed.forget(["sample-0"]), lambda: unnamed.add(new_items(1, prefix="other/"), source="s"), lambda: unnamed.relabel(["sample-0"], "b")):
        with pytest.raises(MemoryEditError, match="carry no sample ids"):
            edit()
    assert 0 in unnamed.memory.row_ids.tolist()
