"""Consistency training: which unlabelled views join a batch, under which target, and what the loss makes of them."""

import pytest
import torch

from medmem.engine.batch import PrepareBatchWithIds, training_batches
from medmem.engine.consistency import IGNORED, ConsistencyBatch, UnlabelledStream, unlabelled_items
from medmem.engine.losses import MemoryAwareLoss


class FixedStream:
    """The same (weak, strong) views every call."""

    passes = 0

    def __init__(self, weak: torch.Tensor, strong: torch.Tensor) -> None:
        self.weak, self.strong = weak, strong

    def next(self):
        return self.weak, self.strong


def _network() -> torch.nn.Module:
    torch.manual_seed(0)
    # dropout shows whether the labelling prediction ran in eval mode: in train mode it would differ call to call
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(12, 3))


class Net(torch.nn.Module):
    """Takes the sample_ids keyword as the bundle's networks do."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _network()

    def forward(self, x, sample_ids=None):
        return self.body(x)


def test_confident_weak_predictions_label_the_strong_views_and_the_rest_are_ignored():
    net = Net().train()
    weak, strong = torch.randn(6, 3, 2, 2), torch.randn(6, 3, 2, 2)
    with torch.no_grad():
        probs = net.eval()(weak).softmax(-1)
    net.train()
    threshold = float(probs.max(-1).values.median())  # about half the unlabelled images are confident
    batch = {"image": torch.randn(4, 3, 2, 2), "label": torch.tensor([0, 1, 2, 1]), "sample_id": torch.tensor([5, 6, 7, 8])}
    images, targets, _, kwargs = ConsistencyBatch(net, FixedStream(weak, strong), threshold)(batch)
    torch.testing.assert_close(images, torch.cat([batch["image"], strong]))
    confident = probs.max(-1).values >= threshold
    assert 0 < int(confident.sum()) < 6
    expected = torch.where(confident, probs.argmax(-1), torch.full((6,), IGNORED))
    assert targets.tolist() == [0, 1, 2, 1] + expected.tolist()
    assert kwargs["sample_ids"].tolist() == [5, 6, 7, 8] + [-1] * 6  # nothing written or excluded for unlabelled rows
    assert net.training  # back in training mode after the eval-mode prediction


def test_the_loss_is_the_mean_cross_entropy_over_labelled_and_confident_rows_only():
    loss = MemoryAwareLoss(Net(), label_smoothing=0.1)
    logits = torch.randn(7, 3)
    targets = torch.tensor([0, 2, 1, 1, IGNORED, 2, IGNORED])
    kept = targets != IGNORED
    by_hand = torch.nn.functional.cross_entropy(logits[kept], targets[kept], label_smoothing=0.1)
    torch.testing.assert_close(loss(logits, targets), by_hand)
    moved = logits.clone()
    moved[~kept] += 10 * torch.randn(int((~kept).sum()), 3)  # an ignored row's prediction does not count
    torch.testing.assert_close(loss(moved, targets), by_hand)


def test_unlabelled_items_are_the_images_outside_the_regime_without_labels(tmp_path):
    training = [{"image": f"t{i}.png", "label": i % 2, "sha256": f"h{i}"} for i in range(5)]
    manifest = {"name": "toy", "classes": ["a", "b"], "training": training, "validation": [], "test": [], "regimes": {"40": [0, 3]}}
    items = unlabelled_items(manifest, 40, tmp_path)
    assert [d["image"] for d in items] == [str(tmp_path / f"t{i}.png") for i in (1, 2, 4)]
    assert all("label" not in d for d in items)


def test_the_stream_goes_through_every_unlabelled_image_once_per_pass_in_a_seeded_order():
    items = [{"image": torch.full((1, 1), float(i)), "image_strong": torch.full((1, 1), -float(i))} for i in range(10)]

    def order(seed: int) -> tuple[list[float], int]:
        stream = UnlabelledStream(items, None, batch_size=5, seed=seed)
        seen = [float(v) for _ in range(4) for v in stream.next()[0].flatten()]
        return seen, stream.passes

    seen, passes = order(0)
    assert sorted(seen[:10]) == sorted(seen[10:]) == [float(i) for i in range(10)] and passes == 1
    assert seen[:10] != seen[10:]  # reshuffled on the second pass
    assert order(0)[0] == seen and order(1)[0] != seen
    with pytest.raises(ValueError, match="unlabelled images"):
        UnlabelledStream([], None, batch_size=5)


def test_consistency_refuses_mixup_and_is_open_to_memory_networks():
    batches = ConsistencyBatch(Net(), FixedStream(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)), 0.9)
    assert training_batches(0.0, 3, "off", consistency=batches) is batches
    assert training_batches(0.0, 3, "full", consistency=batches) is batches
    assert type(training_batches(0.0, 3, "full")) is PrepareBatchWithIds
    with pytest.raises(ValueError, match="needs mixup_alpha 0"):
        training_batches(0.2, 3, "off", consistency=batches)
    with pytest.raises(ValueError, match="consistency_threshold"):
        ConsistencyBatch(Net(), FixedStream(torch.zeros(1), torch.zeros(1)), 0.0)


def _memory_vit(readout: str) -> torch.nn.Module:
    from medmem.networks import MemoryViT

    torch.manual_seed(0)
    return MemoryViT(3, 16, 4, 3, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2, memory_k=4, memory_mode="full", readout=readout)


def _memory_rows(net: torch.nn.Module) -> list[tuple[torch.Tensor, ...]]:
    """(sample ids, labels, keys) of every memory the network writes (its memorising layer's, its readout's bank)."""
    stores = [layer.memory for layer in net.memory_layers()] + ([net.readout.memory] if net.readout is not None else [])
    return [(m.row_ids[: m.num_written].clone(), m.row_labels[: m.num_written].clone(), m.keys[:, : m.num_written * m.tokens].clone()) for m in stores]


@pytest.mark.parametrize("readout", ["linear", "neighbours"])
def test_a_memory_network_writes_the_labelled_rows_of_a_consistency_batch_as_a_plain_batch_would(readout):
    from medmem.engine.handlers import MemoryWriter

    batch = {"image": torch.randn(4, 3, 16, 16), "label": torch.tensor([0, 2, 1, 2]), "sample_id": torch.tensor([5, 9, 6, 8])}
    weak, strong = torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16)
    written = []
    for batches in (PrepareBatchWithIds(), ConsistencyBatch(_memory_vit(readout), FixedStream(weak, strong), 1e-6)):  # every unlabelled row confident
        net = batches.network if isinstance(batches, ConsistencyBatch) else _memory_vit(readout)
        net.train()  # dropout 0: a row's keys depend on its own image only, while the memory is empty
        images, targets, _, kwargs = batches(batch)
        net(images, **kwargs)
        engine = type("Engine", (), {"state": type("State", (), {"batch": batch})()})()
        MemoryWriter(net)(engine)  # commits the loader batch's ids and labels, as in the bundle
        written.append(_memory_rows(net))
    assert len(written[1]) == (2 if readout == "neighbours" else 1)
    for (ids, labels, keys), (plain_ids, plain_labels, plain_keys) in zip(written[1], written[0]):
        assert ids.tolist() == [5, 9, 6, 8] and labels.tolist() == [0, 2, 1, 2]  # the unlabelled views wrote nothing
        assert torch.equal(plain_ids, ids) and torch.equal(plain_labels, labels)
        torch.testing.assert_close(keys, plain_keys)  # each id holds its own image's keys, not a neighbouring row's


def test_a_forward_whose_labelled_rows_are_not_the_batch_is_refused():
    from medmem.memory.store import forward_rows

    ids, labels = forward_rows(torch.tensor([5, 6, -1, -1]), torch.tensor([5, 6]), torch.tensor([1, 0]), 4)
    assert ids.tolist() == [5, 6, -1, -1] and labels.tolist() == [1, 0, -1, -1]
    same = torch.tensor([3, 4])
    assert forward_rows(torch.tensor([-1, -1]), same, None, 2)[0].tolist() == [3, 4]  # as many rows as the batch: its own ids
    for forward in ([6, 5, -1, -1], [5, -1, -1, -1], [5, 6, 7, -1]):
        with pytest.raises(ValueError, match="do not extend the batch"):
            forward_rows(torch.tensor(forward), torch.tensor([5, 6]), torch.tensor([1, 0]), 4)


def test_bundle_trainer_takes_unlabelled_views_and_evaluator_does_not(data_root):
    import json
    from pathlib import Path

    from monai.bundle import ConfigParser

    configs = Path(__file__).resolve().parent.parent / "bundles" / "movit_classification" / "configs"
    parser = ConfigParser()
    parser.read_config(str(configs / "train.json"))
    tiny = {"regime": 1, "image_size": 32, "patch_size": 8, "hidden_size": 32, "mlp_dim": 64, "num_layers": 2, "num_heads": 2, "cache_workers": 0}
    parser.update({**tiny, "memory_mode": "off", "unlabelled_ratio": 0.5, "batch_size": 8, "consistency_threshold": 0.2})
    trainer = parser.get_parsed_content("train#trainer")
    evaluator = parser.get_parsed_content("validate#evaluator")
    batches = trainer.prepare_batch
    assert isinstance(batches, ConsistencyBatch) and batches.network is trainer.network and batches.threshold == 0.2
    assert type(evaluator.prepare_batch) is PrepareBatchWithIds
    manifest = json.loads((Path(__file__).resolve().parent.parent / "data_manifests" / "pbc_blood_cells_96.json").read_text())
    labelled = {manifest["training"][i]["image"] for i in manifest["regimes"]["1"]}
    unlabelled = batches.stream.loader.dataset.data
    assert len(unlabelled) == len(manifest["training"]) - len(labelled) and all("label" not in d for d in unlabelled)
    assert not labelled & {str(Path(d["image"]).relative_to(data_root)) for d in unlabelled}
    images, targets, _, kwargs = batches(next(iter(trainer.data_loader)))
    assert images.shape == (8 + 4, 3, 32, 32) and targets.shape == (12,) and kwargs["sample_ids"][8:].tolist() == [-1] * 4
    loss = trainer.loss_function(trainer.network(images, **kwargs), targets)
    assert torch.isfinite(loss) and loss.requires_grad
    parser.update({"mixup_alpha": 0.2})
    with pytest.raises(RuntimeError) as refused:  # MONAI's config parser wraps the error it evaluated
        parser.get_parsed_content("train_prepare_batch", lazy=False)
    assert isinstance(refused.value.__cause__, ValueError) and "needs mixup_alpha 0" in str(refused.value.__cause__)
    parser.update({"mixup_alpha": 0.0, "memory_mode": "full"})  # the memory ViT takes it
    assert isinstance(parser.get_parsed_content("train_prepare_batch", lazy=False), ConsistencyBatch)
    parser.update({"unlabelled_ratio": 0.0})  # the default: no unlabelled images
    assert type(parser.get_parsed_content("train_prepare_batch", lazy=False)) is PrepareBatchWithIds


def test_a_threshold_above_what_label_smoothing_lets_the_network_reach_warns(tmp_path):
    import warnings

    from medmem.engine.consistency import consistency_batches

    training = [{"image": f"t{i}.png", "label": i % 2, "sha256": f"h{i}"} for i in range(4)]
    manifest = {"name": "toy", "classes": ["a", "b"], "training": training, "validation": [], "test": [], "regimes": {"50": [0, 1]}}

    def build(threshold: float, smoothing: float):
        return consistency_batches(Net(), manifest, 50, tmp_path, 1.0, threshold, 2, 8, 3, label_smoothing=smoothing, num_classes=8)

    with pytest.warns(UserWarning, match=r"above 0.9125"):  # 1 - 0.1 + 0.1 / 8
        build(0.95, 0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert isinstance(build(0.9, 0.1), ConsistencyBatch) and isinstance(build(0.95, 0.0), ConsistencyBatch)
    assert not [w for w in caught if "consistency_threshold" in str(w.message)]
    assert consistency_batches(Net(), manifest, 50, tmp_path, 0.0, 0.95, 2, 8, 3) is None  # ratio 0: off
