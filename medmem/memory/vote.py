"""How much the memory votes: choosing MemoryViT's vote weight w on labelled held-out cases.

The model outputs ``log((1 - w) softmax(head) + w vote)`` (``MemoryViT(memory_vote=w)``). The w chosen
at training time suits the memory as trained; once many labelled cases have been written into the
memory (``medmem memory add``), the vote knows far more than the head, and the best w moves. The head and
the vote do not depend on w, so every candidate w is scored from one pass over the held-out cases.
"""

from __future__ import annotations

from typing import Sequence

import torch

VOTE_WEIGHT_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@torch.no_grad()
def head_and_vote(network, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's softmax (N, C) and the last memorising layer's vote (N, C) for ``images`` (N, C_in, *img_size).

    Evaluation mode; the vote is computed even where the model was built with ``memory_vote=0``.
    """
    layers = network.memory_layers()
    if not layers:
        raise ValueError("this network has no memorising layer: there is no vote to weigh")
    network.eval()
    saved = [layer.compute_vote for layer in layers]
    heads, votes = [], []
    try:
        for layer in layers:
            layer.compute_vote = True
        for i in range(0, len(images), batch_size):
            features = network.forward_features(images[i : i + batch_size])
            heads.append(torch.softmax(network.classification_head(features), dim=-1))
            votes.append(layers[-1].last_vote)
    finally:
        for layer, flag in zip(layers, saved):
            layer.compute_vote = flag
    return torch.cat(heads), torch.cat(votes)


def fused(head: torch.Tensor, vote: torch.Tensor, weight: float) -> torch.Tensor:
    """(N, C) probabilities ``(1 - w) head + w vote``: MemoryViT's output before its log (TorchScript-able)."""
    return (1.0 - weight) * head + weight * vote


def choose_vote_weight(head: torch.Tensor, vote: torch.Tensor, labels: torch.Tensor, grid: Sequence[float] = VOTE_WEIGHT_GRID) -> tuple[float, dict[float, dict]]:
    """The w in ``grid`` with the highest accuracy on these cases (ties: the lower log loss).

    head, vote (N, C) probabilities; labels (N,). Returns ``(w, {w: {"acc", "nll"}})``.
    """
    labels = labels.reshape(-1).long()
    scores: dict[float, dict] = {}
    for w in grid:
        if not 0.0 <= w < 1.0:
            raise ValueError(f"vote weights must be in [0, 1), got {w}")
        p = fused(head, vote, w)
        acc = float((p.argmax(-1) == labels).float().mean())
        nll = float(-torch.log(p.gather(1, labels[:, None]).clamp(min=1e-8)).mean())
        scores[float(w)] = {"acc": acc, "nll": nll}
    best = max(scores, key=lambda w: (scores[w]["acc"], -scores[w]["nll"]))
    return best, scores
