"""The neighbour readout: the classifier reads its nearest training images' features and labels."""

from __future__ import annotations

import pytest
import torch

from medmem.networks import MemoryViT
from medmem.networks.neighbour_readout import NeighbourReadout

SMALL = dict(num_layers=2, hidden_size=48, mlp_dim=96, num_heads=4, stem="conv", memory_blocks=[], memory_vote=0.0)


def filled_readout(features: torch.Tensor, labels: torch.Tensor, k: int = 4, momentum: float = 0.0) -> NeighbourReadout:
    readout = NeighbourReadout(features.shape[1], num_classes=3, k=k, momentum=momentum).train()
    readout(features, torch.arange(len(features)))
    readout.commit_memory(torch.arange(len(features)), labels)
    return readout


def test_bank_holds_what_training_wrote_with_atma():
    torch.manual_seed(0)
    first, second = torch.randn(5, 8), torch.randn(5, 8)
    readout = filled_readout(first, torch.tensor([0, 1, 2, 0, 1]), momentum=0.9)
    readout(second, torch.arange(5))
    readout.commit_memory(torch.arange(5), torch.tensor([0, 1, 2, 0, 1]))
    bank, labels, ids = readout.bank()
    assert torch.allclose(bank, 0.9 * first + 0.1 * second, atol=1e-6)
    assert labels.tolist() == [0, 1, 2, 0, 1] and ids.tolist() == list(range(5))


def test_an_image_never_reads_its_own_entry_in_training():
    torch.manual_seed(0)
    features = torch.randn(1, 8)
    readout = filled_readout(features, torch.tensor([2]))
    assert torch.equal(readout(features, torch.tensor([0])), features)  # only itself in the bank: nothing to read
    assert not torch.allclose(readout(features, torch.tensor([7])), features)  # another image reads it


def test_neighbours_bring_their_label_embedding():
    torch.manual_seed(0)
    features = torch.randn(6, 8)
    readout = filled_readout(features, torch.full((6,), 1)).eval()
    with torch.no_grad():
        readout.difference[-1].weight.zero_()  # no correction by key difference: only the labels speak
    query = torch.randn(2, 8)
    added = readout(query) - query
    assert torch.allclose(added, readout.label_embedding.weight[2].expand(2, -1), atol=1e-5)  # class 1 is row 2


def test_only_the_k_nearest_are_read():
    # two clusters with opposite labels: a query inside one reads only that cluster's label with k = its size
    base = torch.zeros(6, 8)
    base[:3, 0], base[3:, 0] = 10.0, -10.0
    base += 0.01 * torch.arange(48, dtype=torch.float).view(6, 8)
    readout = filled_readout(base, torch.tensor([0, 0, 0, 2, 2, 2]), k=3).eval()
    with torch.no_grad():
        readout.key_projection.weight.copy_(torch.eye(8))
        readout.difference[-1].weight.zero_()
    query = base[:1] + 0.001
    assert torch.allclose(readout(query) - query, readout.label_embedding.weight[1], atol=1e-5)


def test_memory_vit_readout_follows_the_memory_mode_and_trains():
    torch.manual_seed(0)
    net = MemoryViT(1, 32, 8, 3, readout="neighbours", readout_k=4, **SMALL)
    x, ids, y = torch.randn(6, 1, 32, 32), torch.arange(6), torch.tensor([0, 1, 2, 0, 1, 2])
    net.write_memory(x, ids, y)
    assert net.memory_size() == 6 and not net.memory_layers()
    net.eval()
    with torch.no_grad():
        plain = net.classification_head(net.forward_features(x))
        assert not torch.allclose(net(x), plain)
        net.set_memory_mode("off")
        assert torch.allclose(net(x), plain)
        net.set_memory_mode("full")
    with pytest.raises(ValueError, match="no prototype mode"):
        net.set_memory_mode("prototypes")
    net.train()
    torch.nn.functional.cross_entropy(net(x, ids), y).backward()
    for name in ("key_projection.weight", "label_embedding.weight", "difference.0.weight"):
        assert net.readout.get_parameter(name).grad.abs().sum() > 0, name


def test_state_round_trip_and_fingerprint():
    torch.manual_seed(0)
    net = MemoryViT(1, 32, 8, 3, readout="neighbours", readout_k=4, **SMALL)
    x = torch.randn(4, 1, 32, 32)
    net.write_memory(x, torch.arange(4), torch.tensor([0, 1, 2, 0]))
    copy = MemoryViT(**net.config)
    copy.load_state_dict(net.state_dict())
    net.eval(), copy.eval()
    assert copy.memory_size() == 4 and torch.allclose(copy(x), net(x))
    linear = MemoryViT(1, 32, 8, 3, **SMALL)
    assert linear.fingerprint() != net.fingerprint()
    with pytest.raises(RuntimeError, match="another configuration"):
        linear.load_state_dict(net.state_dict())


def test_readout_checks_its_settings():
    with pytest.raises(ValueError, match="readout must be one of"):
        MemoryViT(1, 32, 8, 3, readout="attention", **SMALL)
    with pytest.raises(ValueError, match="no prototype mode"):
        MemoryViT(1, 32, 8, 3, readout="neighbours", memory_mode="prototypes", **SMALL)


def test_summarize_refuses_the_readout_with_the_reason(tmp_path):
    from medmem.engine.summarize import summarize_checkpoint

    net = MemoryViT(1, 32, 8, 3, readout="neighbours", **SMALL)
    with pytest.raises(ValueError, match="model_full.pt: a network with the neighbour readout has no prototype summary"):
        summarize_checkpoint(net, "model_full.pt", [], [], str(tmp_path / "m.pt"), str(tmp_path / "r.json"), 16)


def test_without_labels_the_readout_ignores_what_the_neighbours_are():
    torch.manual_seed(0)
    features = torch.randn(6, 8)
    a = filled_readout(features, torch.zeros(6, dtype=torch.long)).eval()
    b = filled_readout(features, torch.full((6,), 2)).eval()
    b.load_state_dict(a.state_dict(), strict=False)  # same weights; the banks differ only in their labels
    b.memory.row_labels[:6] = 2
    query = torch.randn(3, 8)
    assert not torch.allclose(a(query), b(query))
    a.use_labels = b.use_labels = False
    assert torch.allclose(a(query), b(query))


def test_yes_no_arguments_given_as_text_mean_what_they_say():
    net = MemoryViT(1, 32, 8, 3, readout="neighbours", readout_labels="false", **SMALL)
    assert net.readout.use_labels is False and net.config["readout_labels"] is False
