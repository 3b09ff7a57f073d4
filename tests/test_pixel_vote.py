"""PixelCaseVote: the pixel-space memory of training images and its calibrated vote."""

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from medmem.memory.pixel_vote import PixelCaseVote


def two_class_images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: bright left half; class 1: bright right half; plus noise. (n, 1, 16, 16), (n,)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = 0.3 * torch.rand(n, 1, 16, 16, generator=g)
    for i, y in enumerate(labels):
        images[i, 0, :, :8] += 1.0 - float(y)
        images[i, 0, :, 8:] += float(y)
    return images, labels


def test_vote_matches_scikit_learn_distance_weighted_cosine_knn():
    images, labels = two_class_images(40)
    queries, _ = two_class_images(12, seed=1)
    labels[::7] = 1 - labels[::7]  # some label noise so the vote is not one-hot everywhere
    memory = PixelCaseVote(num_classes=2, in_channels=1, size=8, k=5).fit(images, labels)
    train = memory.descriptors(images).numpy()
    knn = KNeighborsClassifier(n_neighbors=5, weights="distance", metric="cosine").fit(train, labels.numpy())
    expected = knn.predict_proba(memory.descriptors(queries).numpy())
    np.testing.assert_allclose(memory.vote(queries).numpy(), expected, atol=1e-4)  # float32 against float64


def test_an_exact_training_image_takes_the_whole_vote():
    images, labels = two_class_images(20)
    labels[3] = 1 - labels[3]  # its neighbours disagree with it
    memory = PixelCaseVote(num_classes=2, in_channels=1, size=8, k=10).fit(images, labels)
    vote = memory.vote(images[3:4])
    assert vote[0, int(labels[3])] == pytest.approx(1.0)


def test_descriptors_are_standardised_on_the_training_images():
    images, labels = two_class_images(30)
    memory = PixelCaseVote(num_classes=2, in_channels=1, size=4).fit(images * 5 + 2, labels)
    standardised = (memory.thumbnails(images * 5 + 2) - memory.mean) / memory.std
    assert standardised.mean(0).abs().max() < 1e-4
    assert torch.allclose(standardised.std(0, unbiased=False), torch.ones(16), atol=1e-3)
    assert torch.allclose(memory.bank.norm(dim=-1), torch.ones(30))


def test_calibration_keeps_a_misleading_vote_out_and_takes_a_useful_one():
    images, labels = two_class_images(40)
    held_out, held_labels = two_class_images(20, seed=2)
    right = torch.nn.functional.one_hot(held_labels, 2).float() * 0.8 + 0.1  # a model right everywhere
    misleading = PixelCaseVote(num_classes=2, in_channels=1, size=8, k=5).fit(images, 1 - labels)  # every label swapped
    misleading.calibrate(right, held_out, held_labels)
    assert float(misleading.weight) == 0.0
    undecided = torch.tensor([[0.501, 0.499]]).repeat(20, 1)  # a model that always says class 0
    memory = PixelCaseVote(num_classes=2, in_channels=1, size=8, k=5).fit(images, labels)
    memory.calibrate(undecided, held_out, held_labels)
    assert float(memory.weight) > 0.0
    fused = memory(undecided, held_out)
    assert torch.allclose(fused.sum(-1), torch.ones(20))
    assert float((fused.argmax(-1) == held_labels).float().mean()) == 1.0


def test_the_memory_travels_in_the_state_dict():
    images, labels = two_class_images(20)
    memory = PixelCaseVote(num_classes=2, in_channels=1, size=8, k=3).fit(images, labels)
    memory.weight.fill_(0.4)
    restored = PixelCaseVote(num_classes=2, in_channels=1, size=8, k=3)
    restored.load_state_dict(memory.state_dict())
    assert float(restored.weight) == pytest.approx(0.4)
    assert torch.equal(restored.vote(images), memory.vote(images))


def test_bad_input_is_refused_with_the_reason():
    memory = PixelCaseVote(num_classes=2, in_channels=1, size=8)
    with pytest.raises(RuntimeError, match="fit it"):
        memory.vote(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        memory.fit(torch.zeros(4, 3, 16, 16), torch.zeros(4))
    with pytest.raises(ValueError, match="labels must lie"):
        memory.fit(torch.zeros(4, 1, 16, 16), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="one label per image"):
        memory.fit(torch.zeros(4, 1, 16, 16), torch.zeros(3))


def test_nearest_names_the_voting_cases_and_older_files_without_ids_still_load():
    images, labels = two_class_images(20)
    memory = PixelCaseVote(num_classes=2, in_channels=1, size=8, k=3).fit(images, labels, torch.arange(20) + 500)
    index, cos = memory.nearest(images[:2])
    assert index[:, 0].tolist() == [0, 1] and memory.sample_ids[index[:, 0]].tolist() == [500, 501]  # itself first
    assert bool((cos[:, :-1] >= cos[:, 1:]).all())
    memory.power.fill_(2.0)
    old = {k: v for k, v in memory.state_dict().items() if k not in ("sample_ids", "power")}  # a bundle 0.4.0-0.5.0 file
    loaded = PixelCaseVote(num_classes=2, in_channels=1, size=8, k=3)
    loaded.load_state_dict(old)
    assert loaded.sample_ids.tolist() == [-1] * 20 and float(loaded.power) == 1.0  # they weighed by 1 / d
    memory.power.fill_(1.0)
    torch.testing.assert_close(loaded.vote(images[:5]), memory.vote(images[:5]))
    with pytest.raises(ValueError, match="one sample id per image"):
        PixelCaseVote(num_classes=2, in_channels=1).fit(images, labels, torch.arange(3))


def test_distance_power_sharpens_the_vote_towards_the_nearest_case():
    images, labels = two_class_images(30)
    queries, _ = two_class_images(6, seed=4)
    labels[::5] = 1 - labels[::5]
    memory = PixelCaseVote(num_classes=2, in_channels=1, size=8, k=5).fit(images, labels)
    torch.testing.assert_close(memory.vote(queries, power=1.0), memory.vote(queries))
    index, cos = memory.nearest(queries)
    # by hand: weights (1 - cos) ** -p over the 5 nearest
    for p in (0.0, 2.0, 4.0):
        w = (1.0 - cos).clamp(min=1e-6) ** -p
        by_hand = torch.zeros(6, 2).scatter_add_(1, labels[index], w)
        torch.testing.assert_close(memory.vote(queries, power=p), by_hand / by_hand.sum(-1, keepdim=True))



def test_calibration_chooses_the_distance_power_with_the_weight_and_never_does_worse_than_one_over_d():
    from medmem.memory.vote import choose_vote_weight

    images, labels = two_class_images(40)
    labels[::3] = 1 - labels[::3]  # noisy neighbourhoods: how sharply the nearest count matters
    held_out, held_labels = two_class_images(30, seed=5)
    undecided = torch.tensor([[0.52, 0.48]]).repeat(30, 1)
    memory = PixelCaseVote(num_classes=2, in_channels=1, size=8, k=10).fit(images, labels)
    weight, scores = memory.calibrate(undecided, held_out, held_labels)
    w1, scores1 = choose_vote_weight(undecided, memory.vote(held_out, power=1.0), held_labels)
    assert (scores[weight]["acc"], -scores[weight]["nll"]) >= (scores1[w1]["acc"], -scores1[w1]["nll"])
    assert float(memory.power) in (0.0, 0.5, 1.0, 2.0, 4.0) and float(memory.weight) == weight
    # the fused output uses the chosen power, and it travels in the state dict
    torch.testing.assert_close(memory(undecided, held_out), (1 - weight) * undecided + weight * memory.vote(held_out, power=float(memory.power)))
    copy = PixelCaseVote(num_classes=2, in_channels=1, size=8, k=10)
    copy.load_state_dict(memory.state_dict())
    assert float(copy.power) == float(memory.power)
