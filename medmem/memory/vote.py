"""How much the memory votes: choosing MemoryViT's vote weight w on labelled held-out cases.

The model outputs ``log((1 - w) softmax(head) + w vote)`` (``MemoryViT(memory_vote=w)``). The w chosen
at training time suits the memory as trained; once many labelled cases have been written into the
memory (``medmem memory add``), the vote knows far more than the head, and the best w moves. The head and
the vote do not depend on w, so every candidate w is scored from one pass over the held-out cases.
"""

from __future__ import annotations

from typing import Callable, Hashable, Iterable, Sequence

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


def probability_scores(p: torch.Tensor, labels: torch.Tensor) -> dict:
    """``{"acc", "nll"}`` of probabilities (N, C) on labels (N,)."""
    labels = labels.reshape(-1).long()
    acc = float((p.argmax(-1) == labels).float().mean())
    nll = float(-torch.log(p.gather(1, labels[:, None]).clamp(min=1e-8)).mean())
    return {"acc": acc, "nll": nll}


def preference(scores: dict) -> tuple[float, float]:
    """How the vote's settings are ranked on held-out cases: highest accuracy, ties: the lower log loss."""
    return scores["acc"], -scores["nll"]


def choose_vote_weight(head: torch.Tensor, vote: torch.Tensor, labels: torch.Tensor, grid: Sequence[float] = VOTE_WEIGHT_GRID) -> tuple[float, dict[float, dict]]:
    """The w in ``grid`` with the highest accuracy on these cases (ties: the lower log loss).

    head, vote (N, C) probabilities; labels (N,). Returns ``(w, {w: {"acc", "nll"}})``.
    """
    scores: dict[float, dict] = {}
    for w in grid:
        if not 0.0 <= w < 1.0:
            raise ValueError(f"vote weights must be in [0, 1), got {w}")
        scores[float(w)] = probability_scores(fused(head, vote, w), labels)
    best = max(scores, key=lambda w: preference(scores[w]))
    return best, scores


def choose_vote(candidates: Iterable[tuple[Hashable, Callable[[], tuple[torch.Tensor, torch.Tensor]]]], labels: torch.Tensor, grid: Sequence[float] = VOTE_WEIGHT_GRID):
    """The best (setting, w) over several settings of a vote, e.g. its distance power: ``candidates`` yields
    ``(setting, make)`` with ``make()`` -> (head, vote) (N, C) under that setting (made one at a time: a setting may change
    the network). Returns ``(setting, w, {w: {"acc", "nll"}} at that setting)``; the first best wins ties."""
    chosen = None
    for setting, make in candidates:
        w, scores = choose_vote_weight(*make(), labels, grid)
        if chosen is None or preference(scores[w]) > preference(chosen[2][chosen[1]]):
            chosen = (setting, w, scores)
    if chosen is None:
        raise ValueError("no vote settings to choose from")
    return chosen
