"""Self-supervised pre-training of the trunk: the two views, the paired-view loss, the trunk file, and the bundle's
pretrain.json feeding train.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medmem.engine.self_supervised import PairedViewLoss, TwoViewBatch, nt_xent_across_sources
from medmem.networks import ContrastivePretrainer, MemoryViT, ResNetClassifier, load_pretrained_trunk, save_pretrained_trunk
from medmem.networks.pretraining import is_trunk_key
from tests.test_bundle import CONFIGS, REPO, TINY, bundle

SMALL = dict(in_channels=1, img_size=16, patch_size=4, spatial_dims=2, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2, stem="conv")


def pretrained(tmp_path: Path) -> tuple[ContrastivePretrainer, Path]:
    """A pre-trainer whose trunk differs from any fresh initialisation, saved to a trunk file."""
    torch.manual_seed(1)
    pre = ContrastivePretrainer(MemoryViT(num_classes=2, memory_mode="off", **SMALL), projection_dim=8)
    with torch.no_grad():
        for p in pre.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "trunk.pt"
    save_pretrained_trunk(pre, path, images=10, epochs=1)
    return pre, path


def test_a_trunk_file_records_its_recipe_and_refuses_values_it_could_not_load_safely(tmp_path):
    pre, path = pretrained(tmp_path)
    assert torch.load(path, map_location="cpu", weights_only=True)["recipe"] == {}
    save_pretrained_trunk(pre, path, images=10, epochs=1, recipe={"source_groups": True, "temperature": 0.2})
    assert torch.load(path, map_location="cpu", weights_only=True)["recipe"] == {"source_groups": True, "temperature": 0.2}
    with pytest.raises(TypeError, match="trunk2.pt.*recipe.*'regime': 'list'"):
        save_pretrained_trunk(pre, tmp_path / "trunk2.pt", images=10, epochs=1, recipe={"regime": [1]})
    assert not (tmp_path / "trunk2.pt").exists()


def test_a_loaded_trunk_brings_every_trunk_weight_and_leaves_the_memory_read_and_head_fresh(tmp_path):
    pre, path = pretrained(tmp_path)
    torch.manual_seed(2)
    network = MemoryViT(num_classes=5, memory_mode="full", memory_blocks=[-1], **SMALL)
    fresh = {k: v.clone() for k, v in network.state_dict().items()}
    assert load_pretrained_trunk(network, path) is network
    loaded, source = network.state_dict(), pre.trunk.state_dict()
    trunk = [k for k in loaded if is_trunk_key(k)]
    assert any(".attn.qkv." in k for k in trunk) and any(k.startswith("patch_embedding.") for k in trunk) and "cls_token" in trunk
    for key in loaded:
        if is_trunk_key(key):
            assert torch.equal(loaded[key], source[key]), key
        else:  # memory, its read's scalars, prototypes, head: as initialised for this network
            assert torch.equal(loaded[key], fresh[key]), key
    assert not any(is_trunk_key(k) for k in ("classification_head.weight", "blocks.1.attn.gate_logit", "blocks.1.attn.memory.keys"))


def test_a_trunk_for_another_network_or_file_is_refused_naming_the_file(tmp_path):
    _, path = pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"{path}.*hidden_size=32.*hidden_size=48"):
        load_pretrained_trunk(MemoryViT(num_classes=2, memory_mode="off", **{**SMALL, "hidden_size": 48}), path)
    with pytest.raises(ValueError, match=f"{path}.*stem=conv.*stem=patch"):
        load_pretrained_trunk(MemoryViT(num_classes=2, memory_mode="off", **{**SMALL, "stem": "patch"}), path)
    with pytest.raises(ValueError, match=f"{path}.*MemoryViT, not a ResNetClassifier"):
        load_pretrained_trunk(ResNetClassifier(in_channels=1, num_classes=2), path)
    other = tmp_path / "model_full.pt"
    torch.save(MemoryViT(num_classes=2, memory_mode="off", **SMALL).state_dict(), other)
    with pytest.raises(ValueError, match=f"{other}: not a medmem pre-trained trunk"):
        load_pretrained_trunk(MemoryViT(num_classes=2, memory_mode="off", **SMALL), other)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_pretrained_trunk(MemoryViT(num_classes=2, memory_mode="off", **SMALL), tmp_path / "nowhere.pt")
    network = MemoryViT(num_classes=2, memory_mode="off", **SMALL)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    load_pretrained_trunk(network, "")  # the bundle's default: no pre-training
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())


def test_the_paired_view_loss_is_lowest_when_each_image_meets_its_own_other_view():
    torch.manual_seed(0)
    z = torch.randn(16, 8)
    loss = PairedViewLoss(temperature=0.2)
    own = loss(torch.cat([z, z + 0.05 * torch.randn_like(z)]))
    shuffled = loss(torch.cat([z, z[torch.randperm(16)]]))
    assert own < 0.5 < shuffled
    with pytest.raises(ValueError, match="even batch"):
        loss(torch.randn(5, 8))


def test_the_loss_across_sources_is_monais_for_distinct_images_and_never_pushes_apart_copies_of_one_source():
    torch.manual_seed(0)
    b, t = 6, 0.2
    z = torch.randn(2 * b, 8)
    one_each = torch.arange(b).repeat(2)
    torch.testing.assert_close(PairedViewLoss(t)(z, one_each), PairedViewLoss(t)(z))  # MONAI's ContrastiveLoss
    sources = torch.tensor([0, 0, 1, 2, 2, 2]).repeat(2)  # images 0-1 one source, images 3-5 another
    unit = torch.nn.functional.normalize(z, dim=1)
    expected = []
    for i in range(2 * b):  # by hand: the positive over the positive plus the views of other sources
        sim = lambda j: torch.exp(unit[i] @ unit[j] / t)  # noqa: E731
        positive = sim((i + b) % (2 * b))
        expected.append(-torch.log(positive / (positive + sum(sim(j) for j in range(2 * b) if sources[j] != sources[i]))))
    torch.testing.assert_close(PairedViewLoss(t)(z, sources), torch.stack(expected).mean())
    # image 1 made a near copy of image 0 (as LC25000's augmented tiles are): a cost as negatives, none as one source
    copies = z.clone()
    copies[[1, 1 + b]] = z[[0, b]] + 0.01 * torch.randn(2, 8)
    grouped = torch.tensor([0, 0, 1, 2, 3, 4]).repeat(2)
    assert nt_xent_across_sources(copies, grouped, t) < nt_xent_across_sources(copies, one_each, t) - 0.1
    with pytest.raises(ValueError, match="one id per view"):
        nt_xent_across_sources(z, torch.arange(b), t)


def test_entries_of_one_manifest_group_share_a_source_id_and_an_entry_without_one_is_its_own_source():
    from medmem.data.datalist import source_group_ids

    entries = [{"group": "a"}, {}, {"group": "b"}, {"group": "a"}, {}]
    assert source_group_ids(entries) == [0, 1, 2, 0, 3]


def test_pretraining_with_source_groups_batches_each_images_group_beside_its_views(data_root):
    from monai.bundle import ConfigParser
    from monai.data import DataLoader

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "pretrain.json")])
    parser.update({**TINY, "dataset": "lc25000_64", "pretrain_regime": 1, "pretrain_source_groups": True})
    items = parser.get_parsed_content("pretrain#datalist")
    manifest = json.loads((REPO / "data_manifests/lc25000_64.json").read_text())
    names = [manifest["training"][d["sample_id"]]["group"] for d in items]
    ids = [d["source_group"] for d in items]
    assert len(set(names)) == len(set(ids)) < len(items)  # LC25000's regime-1 images hold copies of one tile
    assert all((ids[i] == ids[j]) == (names[i] == names[j]) for i in range(len(items)) for j in range(len(items)))
    transform = parser.get_parsed_content("pretrain#preprocessing")
    batch = next(iter(DataLoader([transform(d) for d in items[:3]], batch_size=3)))
    views, sources = TwoViewBatch()(batch)
    assert views.shape[0] == 6 and sources.tolist() == ids[:3] * 2
    parser.update({"pretrain_source_groups": False})  # the default: no group key, MONAI's loss
    assert "source_group" not in parser.get_parsed_content("pretrain#datalist", lazy=False)[0]


def test_two_views_of_a_scan_differ_keep_its_size_and_range_and_batch_first_views_first(data_root):
    from medmem.data import load_datalist, two_view_transforms
    from medmem.engine import resolve_manifest

    item = load_datalist(resolve_manifest("pbc_blood_cells_96"), "training", str(data_root), 1)[0]
    transform = two_view_transforms(32, 3)
    sample = transform(item)
    assert sample["image"].shape == sample["image_2"].shape == (3, 32, 32)
    for view in (sample["image"], sample["image_2"]):
        assert 0.0 <= float(view.min()) and float(view.max()) <= 1.0
    assert not torch.allclose(sample["image"], sample["image_2"])  # independent draws, not one augmentation twice
    other = transform(item)
    views, target = TwoViewBatch()({"image": torch.stack([sample["image"], other["image"]]), "image_2": torch.stack([sample["image_2"], other["image_2"]])})
    assert target is None and views.shape == (4, 3, 32, 32)
    assert torch.equal(views[1], other["image"]) and torch.equal(views[2], sample["image_2"])
    with pytest.raises(KeyError, match="image_2"):
        TwoViewBatch()({"image": views})


def test_bundle_pretrains_resumes_and_trains_from_the_trunk(tmp_path, data_root):
    out = tmp_path / "pretrain"
    settings = {**TINY, "memory_mode": "off", "pretrain_regime": 1, "pretrain_batch_size": 32, "pretrain_dir": str(out)}
    bundle("run", ["train.json", "pretrain.json"], {**settings, "pretrain_epochs": 1})
    first = torch.load(out / "models" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)
    # resumed to a second epoch: continues from the first (not from scratch) and keeps one checkpoint
    bundle("run", ["train.json", "pretrain.json"], {**settings, "pretrain_epochs": 2, "resume": True})
    assert sorted(p.name for p in (out / "models").glob("checkpoint_epoch=*.pt")) == ["checkpoint_epoch=2.pt"]
    last = torch.load(out / "models" / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    regime_images = len(json.loads((REPO / "data_manifests/pbc_blood_cells_96.json").read_text())["regimes"]["1"])
    epoch_length = first["trainer"]["epoch_length"]
    assert last["trainer"]["iteration"] == 2 * epoch_length and epoch_length == regime_images // 32  # drop_last
    saved = torch.load(out / "pretrained_trunk.pt", map_location="cpu", weights_only=True)
    assert saved["epochs"] == 2 and saved["images"] == regime_images
    # the file says how the trunk was made, settings its weights do not show included
    assert saved["recipe"] == {"learning_rate": 0.001, "batch_size": 32, "temperature": 0.2, "projection_dim": 128, "regime": 1, "source_groups": False, "seed": 0}
    for key, value in saved["trunk"].items():  # the trunk file is the last epoch's trunk
        assert torch.equal(value, last["model"]["trunk." + key]), key
    # train.json builds its network from the trunk (and the memory ViT too, whose memory starts empty)
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({**TINY, "memory_mode": "full", "pretrained_trunk": str(out / "pretrained_trunk.pt")})
    network = parser.get_parsed_content("network")
    state = network.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved["trunk"].items())
    assert int(state["blocks.1.attn.memory.num_rows"]) == 0
    # ... and a network that finds its neighbours in the trunk keeps a frozen copy, filled by the bundle's index step
    from medmem.engine.pixel_index import fit_pixel_index

    parser.update({"memory_retrieval": "trunk", "memory_match": "same_token", "memory_queries": "cls", "pixel_bias": True})
    network = parser.get_parsed_content("network", lazy=False)
    index_state = network.trunk_index.encoder.state_dict()
    assert all(torch.equal(index_state[k], v) for k, v in saved["trunk"].items())
    assert fit_pixel_index(network, parser.get_parsed_content("pixel_index_loader")) == regime_images == network.trunk_index.num_stored
    # after training from the trunk, case_vote.json stores the regime's images in the frozen trunk's features
    run = tmp_path / "train"
    trained = {**TINY, "memory_mode": "off", "epochs": 1, "output_dir": str(run), "pretrained_trunk": str(out / "pretrained_trunk.pt")}
    bundle("run", ["train.json"], trained)
    bundle("run", ["train.json", "case_vote.json"], {**trained, "case_vote_space": "trunk"})
    report = json.loads((run / "case_vote_report.json").read_text())
    assert report["space"] == "trunk" and report["training_images"] == regime_images
    from medmem.engine.case_vote import load_case_vote_file

    vote, cases = load_case_vote_file(str(run / "models" / "case_vote.pt"))
    assert all(torch.equal(vote.encoder.state_dict()[k], v) for k, v in saved["trunk"].items()) and len(cases) == regime_images
    x = torch.stack([parser.get_parsed_content("validate#preprocessing")({"image": d["image"]})["image"] for d in parser.get_parsed_content("train#datalist")[:4]])
    network.trunk_index.add(x, torch.arange(4) + 10**6)  # the index's frozen copy describes them as the vote does
    torch.testing.assert_close(vote.descriptors(x), network.trunk_index.bank[-4:])


def test_a_trunk_learning_rate_scale_slows_exactly_the_trunk_and_leaves_the_default_groups_alone():
    from medmem.networks import param_groups

    network = MemoryViT(num_classes=3, memory_mode="full", memory_blocks=[-1], **SMALL)
    names = {id(p): n for n, p in network.named_parameters()}
    default = param_groups(network, lr=1e-3, weight_decay=0.05)
    assert [g["lr"] for g in default] == [1e-3, 2e-2]  # as before the setting: the rest, then the read's scalars
    slowed = param_groups(network, lr=1e-3, weight_decay=0.05, trunk_lr_scale=0.1)
    rest, trunk, scalars = ({names[id(p)] for p in g["params"]} for g in slowed)
    assert [g["lr"] for g in slowed] == [1e-3, pytest.approx(1e-4), 2e-2]
    assert trunk == {n for n in names.values() if is_trunk_key(n)} and "blocks.0.attn.qkv.weight" in trunk
    assert "classification_head.weight" in rest and not rest & trunk
    assert scalars == {n for n in names.values() if n.endswith(("gate_logit", "log_tau"))}
    assert {names[id(p)] for p in default[1]["params"]} == scalars
