"""Memory reads whose neighbours are found in pixels (``memory_retrieval="pixels"``) and the index that finds them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medmem.memory.pixel_index import PixelNeighbourIndex
from medmem.networks import MemoryViT


def images(n: int, seed: int = 0, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def pixel_vit(**kw) -> MemoryViT:
    torch.manual_seed(0)
    settings = dict(in_channels=1, img_size=16, patch_size=4, num_classes=3, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2, memory_k=3,
                    memory_queries="cls", memory_retrieval="pixels", pixel_size=8, memory_vote=0.5)  # fmt: skip
    settings.update(kw)
    return MemoryViT(**settings)


def test_index_finds_the_nearest_standardised_thumbnails_and_never_the_image_itself():
    x, ids = images(20), torch.arange(100, 120)
    index = PixelNeighbourIndex(1, size=8).fit(x, ids)
    thumbs = F.interpolate(x, size=(8, 8), mode="area").flatten(1)
    z = F.normalize((thumbs - thumbs.mean(0)) / thumbs.std(0, unbiased=False), dim=-1)
    cos = z @ z.T
    # an unseen query (no id): its own stored copy is the nearest, as by hand
    found, sims = index.neighbours(x[:4], k=5)
    assert torch.equal(found, ids[cos[:4].topk(5).indices])
    torch.testing.assert_close(sims, cos[:4].topk(5).values)
    # a training image (its id given) is looked up by its stored thumbnail and never finds itself,
    # whatever augmented view the network gets
    augmented = torch.flip(x[:4], dims=[-1])
    found, _ = index.neighbours(augmented, k=5, exclude_ids=ids[:4])
    by_hand = cos[:4].clone()
    by_hand[torch.arange(4), torch.arange(4)] = float("-inf")
    assert torch.equal(found, ids[by_hand.topk(5).indices])


def test_index_pads_when_fewer_images_than_k_and_refuses_bad_input():
    index = PixelNeighbourIndex(1, size=8).fit(images(3), torch.tensor([5, 6, 7]))
    found, sims = index.neighbours(images(1), k=5, exclude_ids=torch.tensor([6]))
    assert found[0, :2].tolist() != [-1, -1] and 6 not in found[0].tolist()
    assert found[0, 2:].tolist() == [-1, -1, -1] and torch.isinf(sims[0, 2:]).all()
    with pytest.raises(ValueError, match="distinct"):
        PixelNeighbourIndex(1, size=8).fit(images(2), torch.tensor([1, 1]))
    with pytest.raises(RuntimeError, match="empty"):
        PixelNeighbourIndex(1, size=8).neighbours(images(1), k=2)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        index.neighbours(torch.rand(1, 3, 16, 16), k=2)


def test_index_add_replaces_known_ids_and_appends_new_ones_with_the_fitted_standardisation():
    x = images(6)
    index = PixelNeighbourIndex(1, size=8).fit(x, torch.arange(6))
    mean = index.mean.clone()
    index.add(torch.cat([x[:1].flip(-1), images(2, seed=1)]), torch.tensor([0, 10, -1]))  # -1: not a training image, skipped
    assert index.sample_ids.tolist() == [0, 1, 2, 3, 4, 5, 10]
    torch.testing.assert_close(index.mean, mean)
    torch.testing.assert_close(index.bank[0], index.descriptors(x[:1].flip(-1))[0])


def test_class_token_reads_the_entries_of_its_pixel_neighbours():
    model = pixel_vit().eval()
    x, y, ids = images(10), torch.arange(10) % 3, torch.arange(10)
    model.fit_pixel_index(x, ids)
    model.write_memory(x, ids, y)
    layer = model.memory_layers()[0]
    layer.record_evidence = True
    model(x[:4], ids[:4])  # as training images: their own entries excluded
    expected, _ = model.pixel_index.neighbours(x[:4], k=3, exclude_ids=ids[:4])
    owners = layer.evidence["sample_ids"][..., 0]  # (B, H, k)
    assert torch.equal(owners, expected[:, None, :].expand_as(owners))
    # the vote is the attention-weighted histogram of those neighbours' labels
    w = layer.evidence["weights"]
    by_hand = torch.zeros(4, 2, 3).scatter_add_(2, y[owners], w)
    torch.testing.assert_close(layer.last_vote, (by_hand / by_hand.sum(-1, keepdim=True)).mean(1))


def test_pixel_neighbours_change_the_output_and_unwritten_neighbours_are_skipped():
    model = pixel_vit(memory_vote=0.0).eval()
    x, ids = images(10), torch.arange(10)
    model.fit_pixel_index(x, ids)
    before = model(x[:2]).detach()  # nothing written to the attention memory: plain output
    model.memory_layers()[0].mode = "off"
    torch.testing.assert_close(model(x[:2]), before)
    model.memory_layers()[0].mode = "full"
    model.write_memory(x, ids, torch.arange(10) % 3)
    assert not torch.allclose(model(x[:2]), before, atol=1e-4)


def test_gradients_reach_the_query_and_the_index_travels_in_the_state_dict():
    model = pixel_vit().train()
    x, ids = images(8), torch.arange(8)
    model.fit_pixel_index(x, ids)
    model.write_memory(x, ids, torch.arange(8) % 3)
    model.train()
    model(x, ids).sum().backward()
    layer = model.memory_layers()[0]
    assert layer.qkv.weight.grad.abs().sum() > 0 and layer.log_tau.grad is not None and layer.log_tau.grad.abs().sum() > 0
    fresh = pixel_vit().eval()
    fresh.load_state_dict(model.state_dict())
    model.eval()
    torch.testing.assert_close(fresh(x[:3]), model(x[:3]))
    assert torch.equal(fresh.pixel_index.sample_ids, model.pixel_index.sample_ids)


def test_pixel_retrieval_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="memory_queries 'cls'"):
        pixel_vit(memory_queries="all")
    with pytest.raises(ValueError, match="memory_retrieval must be one of"):
        pixel_vit(memory_retrieval="pixel")
    model = pixel_vit()
    with pytest.raises(ValueError, match="no prototype mode"):
        model.set_memory_mode("prototypes")
    with pytest.raises(RuntimeError, match="fit_pixel_index"):
        model(images(1))
    with pytest.raises(ValueError, match="no neighbour index"):
        pixel_vit(memory_retrieval="key").fit_pixel_index(images(2), torch.arange(2))


def test_training_config_builds_no_pixel_loader_for_a_network_without_an_index(data_root):
    """MONAI's DataLoader draws from the global generator when built: building one for every network would reshuffle
    the plain and key-retrieval networks' training (their runs would no longer reproduce)."""
    from pathlib import Path

    from monai.bundle import ConfigParser

    from medmem.engine.pixel_index import fit_pixel_index

    parser = ConfigParser()
    parser.read_config(str(Path(__file__).resolve().parent.parent / "bundles/movit_classification/configs/train.json"))
    parser.update({"dataset": "pbc_blood_cells_96", "regime": 1})
    before = torch.get_rng_state()
    make_loader = parser.get_parsed_content("pixel_index_loader")
    assert fit_pixel_index(pixel_vit(memory_retrieval="key", memory_queries="all"), make_loader) == 0
    assert torch.equal(torch.get_rng_state(), before)
    # the network with an index gets the regime's training images, un-augmented
    model = pixel_vit(in_channels=3, img_size=64, patch_size=8)
    assert fit_pixel_index(model, make_loader) == len(parser.get_parsed_content("train#datalist")) == model.pixel_index.num_stored


def test_pixel_bias_alone_weighs_the_neighbours_as_the_distance_weighted_pixel_knn_and_is_learned():
    from medmem.memory.pixel_vote import PixelCaseVote
    from medmem.networks.memory_vit import param_groups

    x, y, ids = images(12), torch.arange(12) % 3, torch.arange(12)
    queries = images(5, seed=3)
    case_vote = PixelCaseVote(3, 1, size=8, k=3).fit(x, y).vote(queries)
    votes = {}
    for bias in (False, True):
        model = pixel_vit(pixel_bias=bias).eval()
        model.fit_pixel_index(x, ids)
        model.write_memory(x, ids, y)
        layer = model.memory_layers()[0]
        layer.log_tau.data.fill_(-30.0)  # no query-key part: the scores are the pixel bias alone (beta = 1 at start)
        model(queries)
        votes[bias] = layer.last_vote
    torch.testing.assert_close(votes[True], case_vote)
    assert not torch.allclose(votes[False], case_vote, atol=1e-3)  # without it the three neighbours weigh alike
    # beta is trained (with the read's other scalars: larger learning rate, no weight decay)
    model.train()
    model(x, ids).sum().backward()
    assert layer.pixel_beta.grad is not None and layer.pixel_beta.grad.abs().sum() > 0
    memory_group = param_groups(model, 1e-3, 0.05)[1]
    assert any(p is layer.pixel_beta for p in memory_group["params"]) and memory_group["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="needs memory_retrieval one of"):
        pixel_vit(memory_retrieval="key", pixel_bias=True)


def test_enabling_the_pixel_bias_after_training_holds_the_trained_read_at_zero_and_the_case_vote_at_one():
    """The calibrated read (benchmarks' ``<network>_cr``) searches a grid whose ends are the read as trained (temperature
    unchanged, beta 0) and the distance-weighted pixel k-NN (query-key part off, beta 1) on a layer built without the bias."""
    from medmem.memory.pixel_vote import PixelCaseVote

    x, y, ids = images(12), torch.arange(12) % 3, torch.arange(12)
    queries = images(5, seed=3)
    model = pixel_vit().eval()
    model.fit_pixel_index(x, ids)
    model.write_memory(x, ids, y)
    layer = model.memory_layers()[0]
    with torch.no_grad():
        layer.log_tau.copy_(torch.tensor([0.3, -0.2]))  # a trained, non-neutral query-key temperature per head
    trained = model(queries)
    trained_vote = layer.last_vote.clone()
    layer.enable_pixel_bias(0.0)
    torch.testing.assert_close(model(queries), trained)
    torch.testing.assert_close(layer.last_vote, trained_vote)
    layer.enable_pixel_bias(1.0)
    model(queries)
    assert not torch.allclose(layer.last_vote, trained_vote, atol=1e-3)  # the bias now weighs the neighbours
    layer.log_tau.data.fill_(-30.0)
    model(queries)
    torch.testing.assert_close(layer.last_vote, PixelCaseVote(3, 1, size=8, k=3).fit(x, y).vote(queries))
