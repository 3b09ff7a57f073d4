"""The case vote in a frozen pre-trained trunk's features (``case_vote_space "trunk"``, ``TrunkCaseVote``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.neighbors import KNeighborsClassifier

from medmem.engine.case_vote import load_case_vote_file, new_case_vote, save_case_vote
from medmem.memory.trunk_vote import TrunkCaseVote
from tests.test_pretraining import SMALL, pretrained


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_the_vote_is_scikit_learns_distance_weighted_cosine_knn_on_the_pretrainers_own_features(tmp_path):
    pre, path = pretrained(tmp_path)
    x, labels, queries = images(30), torch.arange(30) % 3, images(8, seed=1)
    vote = TrunkCaseVote.from_trunk_file(path, num_classes=3, k=5).fit(x, labels, torch.arange(30) + 7)
    pre.trunk.eval()
    with torch.no_grad():
        train, probe = (F.normalize(pre.trunk.forward_features(t), dim=-1).numpy() for t in (x, queries))
    knn = KNeighborsClassifier(n_neighbors=5, weights="distance", metric="cosine").fit(train, labels.numpy())
    np.testing.assert_allclose(vote.vote(queries, power=1.0).numpy(), knn.predict_proba(probe), atol=1e-4)
    # the trunk stays frozen: no gradient, eval mode even when the vote is put in training mode
    vote.train()
    assert not vote.encoder.training and not any(p.requires_grad for p in vote.encoder.parameters())


def test_calibration_takes_a_useful_vote_and_a_saved_vote_brings_its_trunk(tmp_path):
    _, path = pretrained(tmp_path)
    x, labels = images(30), torch.arange(30) % 3
    vote = TrunkCaseVote.from_trunk_file(path, num_classes=3, k=1).fit(x, labels, torch.arange(30))
    undecided = torch.full((30, 3), 1 / 3) + torch.tensor([0.01, 0.0, 0.0])  # a model that always says class 0
    weight, _ = vote.calibrate(undecided, x, labels)  # held-out = stored here: the nearest case is the image itself
    assert weight > 0 and float((vote(undecided, x).argmax(-1) == labels).float().mean()) == 1.0
    save_case_vote(vote, {"7": {"case_id": "c7", "label": "b"}}, tmp_path / "vote.pt")
    loaded, cases = load_case_vote_file(str(tmp_path / "vote.pt"))
    assert isinstance(loaded, TrunkCaseVote) and cases == {"7": {"case_id": "c7", "label": "b"}}
    assert float(loaded.weight) == weight and bool(loaded.encoder_loaded)
    new = images(5, seed=2)
    assert torch.equal(loaded.vote(new), vote.vote(new)) and torch.equal(loaded.bank, vote.bank)


def test_a_trunk_vote_without_a_trunk_or_for_other_images_is_refused_with_the_reason(tmp_path):
    _, path = pretrained(tmp_path)
    unloaded = TrunkCaseVote(3, dict(SMALL))  # built from settings alone (img_size 16, an int): no trunk weights
    assert unloaded.img_size == [16, 16]
    with pytest.raises(ValueError, match="from_trunk_file"):
        unloaded.fit(images(4), torch.arange(4) % 3)
    vote = TrunkCaseVote.from_trunk_file(path, num_classes=3).fit(images(4), torch.arange(4) % 3)
    with pytest.raises(ValueError, match=r"\(B, 1, 16, 16\).*got \(2, 1, 32, 32\)"):
        vote.vote(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="give its file"):
        new_case_vote("trunk", 3, 1, k=10, size=28, pretrained_trunk=None)
    with pytest.raises(ValueError, match=rf"{path}: trunk pre-trained on 1-channel images, the training images have 3"):
        new_case_vote("trunk", 3, 3, k=10, size=28, pretrained_trunk=str(path))
    with pytest.raises(ValueError, match="case_vote_space must be one of"):
        new_case_vote("features", 3, 1, k=10, size=28, pretrained_trunk=None)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt: not a medmem pre-trained trunk"):
        new_case_vote("trunk", 3, 1, k=10, size=28, pretrained_trunk=str(tmp_path / "other.pt"))
