"""Memory reads whose neighbours are found in a frozen pre-trained trunk's features (``memory_retrieval="trunk"``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medmem.networks import MemoryViT, load_pretrained_trunk, param_groups
from medmem.networks.pretraining import is_trunk_key
from tests.test_pretraining import SMALL, pretrained


def trunk_vit(**kw) -> MemoryViT:
    torch.manual_seed(3)
    settings = dict(num_classes=3, memory_mode="full", memory_match="same_token", memory_retrieval="trunk", memory_k=3, pixel_bias=True, memory_vote=0.5, **SMALL)
    return MemoryViT(**{**settings, **kw})


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_the_index_finds_the_nearest_training_images_in_the_pretrained_trunks_features_and_never_the_image_itself(tmp_path):
    pre, path = pretrained(tmp_path)
    network = load_pretrained_trunk(trunk_vit(), path)
    x, ids = images(12), torch.arange(40, 52)
    network.fit_pixel_index(x, ids)
    pre.trunk.eval()
    with torch.no_grad():
        stored = F.normalize(pre.trunk.forward_features(x), dim=-1)
        new = images(4, seed=1)
        probe = F.normalize(pre.trunk.forward_features(new), dim=-1)
    # new images: the k most cosine-alike training images in the pre-trainer's own features
    found, cos = network.neighbour_index.neighbours(new, k=3)
    top = (probe @ stored.T).topk(3, dim=-1)
    assert torch.equal(found, ids[top.indices])
    torch.testing.assert_close(cos, top.values)
    # training images (by id, whatever view is given): their stored features, never themselves
    found, _ = network.neighbour_index.neighbours(torch.zeros(3, 1, 16, 16), k=3, exclude_ids=ids[:3])
    self_masked = (stored[:3] @ stored.T).fill_diagonal_(float("-inf"))
    assert torch.equal(found, ids[self_masked.topk(3, dim=-1).indices])
    assert not (found == ids[:3, None]).any()


def test_fine_tuning_moves_the_network_and_never_the_index_trunk(tmp_path):
    _, path = pretrained(tmp_path)
    network = load_pretrained_trunk(trunk_vit(), path)
    x, ids, y = images(8), torch.arange(8), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    network.fit_pixel_index(x, ids)
    encoder_before = {k: v.clone() for k, v in network.trunk_index.state_dict().items()}
    trunk_before = {k: v.clone() for k, v in network.state_dict().items() if is_trunk_key(k)}
    optimiser = torch.optim.AdamW(param_groups(network, lr=1e-2, weight_decay=0.1))
    network.train()
    assert not network.trunk_index.encoder.training and not any(p.requires_grad for p in network.trunk_index.parameters())
    for _ in range(3):
        optimiser.zero_grad()
        F.nll_loss(network(x, ids), y).backward()
        optimiser.step()
        network.commit_memory(ids, y)
    after = network.trunk_index.state_dict()
    assert all(torch.equal(after[k], v) for k, v in encoder_before.items())
    assert any(not torch.equal(network.state_dict()[k], v) for k, v in trunk_before.items())


def test_a_saved_network_brings_its_index_trunk_and_without_a_trunk_the_index_is_refused(tmp_path):
    _, path = pretrained(tmp_path)
    network = load_pretrained_trunk(trunk_vit(), path).eval()
    x, ids = images(6), torch.arange(6)
    network.fit_pixel_index(x, ids)
    network.write_memory(x, ids, torch.tensor([0, 1, 2, 0, 1, 2]))
    restored = trunk_vit()  # no trunk loaded: the checkpoint brings the index's encoder and its stored features
    restored.load_state_dict(network.state_dict())
    new = images(3, seed=2)
    assert torch.equal(restored.eval().neighbour_index.neighbours(new, 3)[0], network.neighbour_index.neighbours(new, 3)[0])
    torch.testing.assert_close(restored(new), network(new))
    with pytest.raises(ValueError, match="pre-trained trunk"):
        trunk_vit().fit_pixel_index(x, ids)
    with pytest.raises(ValueError, match="no prototype mode"):
        network.set_memory_mode("prototypes")
