"""Memory contrastive loss: what counts as a positive, gradients, and that it pulls keys to their class."""

from __future__ import annotations

import torch

from medmem.engine import MemoryAwareLoss
from medmem.memory.contrastive import memory_contrastive_loss
from medmem.networks import MemoryViT


def tiny(**kw) -> MemoryViT:
    torch.manual_seed(0)
    return MemoryViT(1, 16, 4, 3, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2, memory_k=4, **kw)


def filled(net: MemoryViT, n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = torch.randn(n, 1, 16, 16), torch.arange(n) % 3
    net.write_memory(x, torch.arange(n), y)
    return x, y


def test_loss_is_zero_with_gradient_on_an_empty_memory():
    net = tiny().train()
    net(torch.randn(4, 1, 16, 16), torch.arange(4))
    loss = memory_contrastive_loss(net.memory_layers()[0], torch.zeros(4))
    assert float(loss.detach()) == 0.0 and loss.requires_grad


def test_own_entry_is_not_a_positive():
    """An image whose only same-class entry in memory is itself has no positive: loss 0."""
    net = tiny().train()
    x = torch.randn(2, 1, 16, 16)
    net.write_memory(x, torch.tensor([0, 1]), torch.tensor([0, 1]))
    net(x, torch.tensor([0, 1]))
    layer = net.memory_layers()[0]
    assert float(memory_contrastive_loss(layer, torch.tensor([0, 1])).detach()) == 0.0
    net(x, torch.tensor([-1, -1]))  # unknown ids (not in memory): the stored copies are positives
    assert float(memory_contrastive_loss(layer, torch.tensor([0, 1])).detach()) > 0.0


def test_loss_equals_supcon_by_hand():
    net = tiny().train()
    x, y = filled(net)
    net(x[:3], torch.arange(3))
    layer = net.memory_layers()[0]
    loss = memory_contrastive_loss(layer, y[:3], temperature=0.5)
    q = torch.nn.functional.normalize(layer.train_cls_keys.detach(), dim=-1)  # (3, H, Dh)
    bank = layer.memory.keys[:, 0 :: layer.memory.tokens][:, :12]
    expected = []
    for i in range(3):
        for h in range(q.shape[1]):
            logits = (bank[h] @ q[i, h]) / 0.5
            logits[i] = float("-inf")  # own row (sample id i is row i)
            logp = torch.log_softmax(logits, 0)
            pos = [j for j in range(12) if j != i and int(y[j]) == int(y[i])]
            expected.append(-logp[pos].mean())
    torch.testing.assert_close(loss.detach(), torch.stack(expected).mean(), rtol=1e-5, atol=1e-5)


def test_training_with_the_loss_pulls_keys_to_their_class():
    """A few steps of CE + contrast raise same-class key similarity over other-class similarity."""
    net = tiny(memory_match="same_token", memory_retrieval="key", memory_labels=True).train()
    g = torch.Generator().manual_seed(1)
    y = torch.arange(24) % 3
    x = torch.randn(24, 1, 16, 16, generator=g) + y.view(-1, 1, 1, 1) * 0.3
    ids = torch.arange(24)
    criterion = MemoryAwareLoss(net, contrast_weight=1.0, temperature=0.1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)

    def margin() -> float:
        keys = net.memory_layers()[0].memory.keys[:, 0 :: net.tokens][:, :24]  # (H, 24, Dh)
        sim = torch.einsum("hnd,hmd->nm", keys, keys) / keys.shape[0]
        same = (y[:, None] == y[None, :]) & ~torch.eye(24, dtype=torch.bool)
        diff = y[:, None] != y[None, :]
        return float(sim[same].mean() - sim[diff].mean())

    net.write_memory(x, ids, y)
    before = margin()
    for _ in range(30):
        loss = criterion(net(x, ids), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        net.commit_memory(ids, y)
    assert margin() > before + 0.1
    with torch.no_grad():
        assert float(criterion(net(x, ids), y)) > float(torch.nn.functional.cross_entropy(net(x, ids), y))  # the contrast term is added


def test_zero_weight_is_plain_cross_entropy():
    net = tiny().train()
    filled(net)
    x, y = torch.randn(5, 1, 16, 16), torch.tensor([0, 1, 2, 0, 1])
    torch.manual_seed(3)
    logits = net(x, torch.arange(5))
    torch.testing.assert_close(MemoryAwareLoss(net, 0.0, label_smoothing=0.1)(logits, y), torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1))


def test_separate_vote_training_scores_head_and_vote_apart():
    """``memory_vote_training="separate"``: in training the output is the head's own logits and the loss
    adds CE of the vote; in eval the output is fused as with ``fused``."""
    net = tiny(memory_match="same_token", memory_retrieval="key", memory_vote=0.5, memory_vote_training="separate")
    x, y = filled(net)
    net.train()
    torch.manual_seed(5)
    out = net(x[:4], torch.arange(4))
    vote = net.train_vote
    assert vote is not None and vote.requires_grad
    torch.testing.assert_close(vote.sum(-1), torch.ones(4))
    torch.manual_seed(5)
    head = net.classification_head(net.forward_features(x[:4], torch.arange(4)))
    torch.testing.assert_close(out, head)  # not fused: plain logits (not log-probabilities)
    assert not torch.allclose(out.exp().sum(-1), torch.ones(4), atol=1e-3)
    ce = torch.nn.CrossEntropyLoss()
    loss = MemoryAwareLoss(net, vote_weight=2.0)
    net(x[:4], torch.arange(4))
    expected = ce(out, y[:4]) + 2.0 * ce(torch.log(net.train_vote), y[:4])
    torch.testing.assert_close(loss(out, y[:4]), expected)
    # the vote term sends gradient into the memorising layer's query path
    net.zero_grad()
    MemoryAwareLoss(net, vote_weight=1.0)(net(x[:4], torch.arange(4)).detach(), y[:4]).backward()
    assert net.memory_layers()[0].qkv.weight.grad.abs().sum() > 0
    net.eval()
    fused = net(x[:4])
    assert net.train_vote is None
    torch.testing.assert_close(fused.exp().sum(-1), torch.ones(4))


def test_fused_vote_training_adds_no_vote_term():
    net = tiny(memory_match="same_token", memory_retrieval="key", memory_vote=0.5).train()
    x, y = filled(net)
    out = net(x[:4], torch.arange(4))
    assert net.train_vote is None
    torch.testing.assert_close(MemoryAwareLoss(net)(out, y[:4]), torch.nn.CrossEntropyLoss()(out, y[:4]))
