"""Mixup of training batches (bundle ``mixup_alpha``): what a mixed batch holds, the loss on its soft targets, and the
bundle's wiring (trainer mixes, evaluator does not, a memory network is refused)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medmem.engine import MemoryAwareLoss, MixUpBatch, PrepareBatchWithIds, training_batches
from medmem.networks import MemoryViT

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "bundles" / "movit_classification" / "configs"


def batch_of(n: int, num_classes: int | None = None, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) if num_classes is None else torch.randint(0, num_classes, (n,), generator=g)
    return {"image": torch.rand(n, 3, 8, 8, generator=g), "label": labels, "sample_id": torch.arange(10, 10 + n)}


def test_each_mixed_image_is_the_mix_its_target_names():
    n = 6
    batch = batch_of(n)  # one class per image: a target row names both images and their weights
    images, targets, _, kwargs = MixUpBatch(alpha=0.4, num_classes=n, seed=3)(batch)
    assert images.shape == batch["image"].shape and targets.shape == (n, n) and targets.dtype == images.dtype
    torch.testing.assert_close(targets.sum(1), torch.ones(n))
    assert bool((targets >= 0).all()) and int((targets > 0).sum(1).max()) <= 2
    mixed_with_another = 0
    for i in range(n):
        # image i is weighted targets[i, i]; its partner j is the other class in its row (itself when paired with itself)
        partners = [j for j in torch.nonzero(targets[i]).flatten().tolist() if j != i]
        expected = batch["image"][i] * targets[i, i] + sum(batch["image"][j] * targets[i, j] for j in partners)
        torch.testing.assert_close(images[i], expected, atol=1e-5, rtol=0)
        mixed_with_another += bool(partners)
    assert mixed_with_another >= n // 2  # a random pairing leaves few images with themselves
    assert kwargs["sample_ids"].tolist() == [-1] * n  # a mix is no training image: nothing written or excluded for it


def test_mixing_repeats_with_its_seed_and_takes_a_short_last_batch():
    batch = batch_of(8, num_classes=3)
    first = MixUpBatch(0.2, 3, seed=1)(batch)
    again = MixUpBatch(0.2, 3, seed=1)(batch)
    other = MixUpBatch(0.2, 3, seed=2)(batch)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    mixer = MixUpBatch(0.2, 3, seed=1)
    mixer(batch)
    images, targets, _, _ = mixer(batch_of(5, num_classes=3))  # the epoch's last, smaller batch
    assert images.shape[0] == targets.shape[0] == 5


def test_training_batches_mix_only_when_asked_and_only_without_a_memory():
    plain = training_batches(0.0, 4, "full")
    assert type(plain) is PrepareBatchWithIds
    batch = batch_of(4)
    images, labels, _, kwargs = plain(batch)
    assert (
        torch.equal(images, batch["image"])
        and labels.tolist() == [0, 1, 2, 3]
        and kwargs["sample_ids"].tolist() == [10, 11, 12, 13]
    )
    assert isinstance(training_batches(0.2, 4, "off"), MixUpBatch)
    with pytest.raises(ValueError, match="memory_mode 'off'"):
        training_batches(0.2, 4, "full")
    with pytest.raises(ValueError, match="mixup_alpha must be >= 0"):
        training_batches(-0.1, 4, "off")
    with pytest.raises(ValueError, match="Expected positive"):  # MONAI's own check, reached directly
        MixUpBatch(0.0, 4)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_on_mixed_targets_is_their_cross_entropy(smoothing):
    net = MemoryViT(3, 8, 4, 4, hidden_size=16, mlp_dim=32, num_layers=1, num_heads=2, memory_mode="off")
    loss = MemoryAwareLoss(net, label_smoothing=smoothing)
    logits = torch.randn(5, 4)
    soft = torch.softmax(torch.randn(5, 4), dim=-1)
    smoothed = soft * (1 - smoothing) + smoothing / 4
    by_hand = -(smoothed * torch.log_softmax(logits, dim=-1)).sum(1).mean()
    torch.testing.assert_close(loss(logits, soft), by_hand)
    labels = torch.tensor([0, 3, 1, 1, 2])  # one-hot soft targets: the same loss as class indices
    torch.testing.assert_close(loss(logits, torch.nn.functional.one_hot(labels, 4).float()), loss(logits, labels))


def test_loss_refuses_mixed_targets_for_a_memory_vote_in_training():
    net = MemoryViT(3, 8, 4, 4, hidden_size=16, mlp_dim=32, num_layers=1, num_heads=2, memory_mode="full", memory_k=2,
                    memory_vote=0.5, memory_vote_training="separate").train()  # fmt: skip
    net.train_vote = torch.full((2, 4), 0.25)  # what a separate-vote forward leaves behind
    with pytest.raises(ValueError, match="without mixup"):
        MemoryAwareLoss(net)(torch.randn(2, 4), torch.full((2, 4), 0.25))


def test_bundle_trainer_mixes_and_evaluator_does_not(data_root):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    tiny = {
        "regime": 1,
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 32,
        "mlp_dim": 64,
        "num_layers": 2,
        "num_heads": 2,
        "cache_workers": 0,
    }
    parser.update({**tiny, "memory_mode": "off", "mixup_alpha": 0.2})
    trainer = parser.get_parsed_content("train#trainer")
    evaluator = parser.get_parsed_content("validate#evaluator")
    assert isinstance(trainer.prepare_batch, MixUpBatch) and trainer.prepare_batch.mixer.alpha == 0.2
    assert type(evaluator.prepare_batch) is PrepareBatchWithIds
    batch = next(iter(trainer.data_loader))
    images, targets, _, _ = trainer.prepare_batch(batch)
    assert targets.shape == (len(images), parser.get_parsed_content("num_classes"))
    loss = trainer.loss_function(trainer.network(images), targets)
    assert torch.isfinite(loss) and loss.requires_grad
    parser.update({"memory_mode": "full"})
    with pytest.raises(RuntimeError) as refused:  # MONAI's config parser wraps the error it evaluated
        parser.get_parsed_content("train_prepare_batch", lazy=False)
    assert isinstance(refused.value.__cause__, ValueError) and "memory_mode 'off'" in str(refused.value.__cause__)
    parser.update({"mixup_alpha": 0.0})  # the default: the trainer's batches are the plain ones
    assert type(parser.get_parsed_content("train_prepare_batch", lazy=False)) is PrepareBatchWithIds
