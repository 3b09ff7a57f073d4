"""A memory of the training images in pixel space whose nearest cases vote with their labels.

Why pixels: the memory ViT's read (inside attention, or as a readout before the head) finds its neighbours in the
network's own feature space, and there they say what the features already say (docs/design.md, sessions 12-13).
``benchmarks/regimes/other_space.py`` (session 14) found neighbours in the raw, downsampled images that add what the
trained head lacks on brain MRI and LC25000 (2-5 ACC points fused with the plain ViT), while neighbours from the stem
or inner blocks add little. The network never sees these thumbnails as such: they hold orientation, intensity and
colour cues the training augmentation teaches the network to ignore.

``PixelCaseVote`` stores one standardised thumbnail (``size`` x ``size``, every channel) per training image with its
label; a query's ``k`` nearest stored cases (cosine) vote, weighted by ``1 / cosine distance`` as scikit-learn's
distance-weighted k-NN does. The model's output becomes ``(1 - w) p + w vote`` (:func:`medmem.memory.vote.fused`)
with ``w`` chosen on labelled held-out cases (:func:`medmem.memory.vote.choose_vote_weight`; 0 where the vote does not help).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medmem.memory.vote import VOTE_WEIGHT_GRID, choose_vote_weight, fused

EPS = 1e-6


class PixelCaseVote(nn.Module):
    """k-NN vote of stored training thumbnails (bank (N, C * size * size), labels (N,)) for images (B, C, H, W)."""

    def __init__(self, num_classes: int, in_channels: int, size: int = 28, k: int = 10) -> None:
        super().__init__()
        if num_classes < 2 or in_channels < 1 or size < 1 or k < 1:
            raise ValueError(f"PixelCaseVote needs num_classes >= 2, in_channels, size, k >= 1; got {num_classes}, {in_channels}, {size}, {k}")
        self.num_classes, self.in_channels, self.size, self.k = num_classes, in_channels, size, k
        dim = in_channels * size * size
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("bank", torch.zeros(0, dim))
        self.register_buffer("labels", torch.zeros(0, dtype=torch.long))
        self.register_buffer("weight", torch.zeros((), dtype=torch.float64))  # w of the fused output; 0 until calibrated

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # the bank's size is the number of stored images: take it from the checkpoint
        for name in ("bank", "labels"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def thumbnails(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C * size * size): area-downsampled, before standardising."""
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"expected images (B, {self.in_channels}, H, W), got {tuple(images.shape)}")
        return F.interpolate(images.float(), size=(self.size, self.size), mode="area").flatten(1)

    def descriptors(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> unit-norm standardised thumbnails (B, C * size * size)."""
        return F.normalize((self.thumbnails(images) - self.mean) / self.std, dim=-1)

    @torch.no_grad()
    def fit(self, images: torch.Tensor, labels: torch.Tensor) -> "PixelCaseVote":
        """Store the training images (N, C, H, W) with their labels (N,); per-pixel mean and std come from them."""
        labels = torch.as_tensor(labels).reshape(-1).long()
        if len(images) != len(labels) or len(labels) == 0:
            raise ValueError(f"need one label per image and at least one image, got {len(images)} images and {len(labels)} labels")
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got {int(labels.min())}..{int(labels.max())}")
        thumbs = self.thumbnails(images)
        self.mean, self.std = thumbs.mean(0), thumbs.std(0, unbiased=False).clamp(min=EPS)
        self.bank, self.labels = self.descriptors(images), labels.clone()
        return self

    @torch.no_grad()
    def vote(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Class distribution (B, num_classes) of each image's ``k`` nearest stored cases."""
        if len(self.labels) == 0:
            raise RuntimeError("PixelCaseVote is empty: fit it on the training images first")
        k = min(self.k, len(self.labels))
        votes = []
        for i in range(0, len(images), batch_size):
            cos = self.descriptors(images[i : i + batch_size]) @ self.bank.T  # (b, N)
            sim, index = cos.topk(k, dim=-1)
            distance = (1.0 - sim).clamp(min=0.0)
            # scikit-learn's "distance" weights: 1 / d, and an exact match (d = 0) takes the whole vote
            exact = distance <= EPS
            weights = torch.where(exact.any(-1, keepdim=True), exact.float(), 1.0 / distance.clamp(min=EPS))
            v = torch.zeros(len(index), self.num_classes).scatter_add_(1, self.labels[index], weights)
            votes.append(v / v.sum(-1, keepdim=True))
        return torch.cat(votes)

    @torch.no_grad()
    def calibrate(self, probabilities: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, grid=VOTE_WEIGHT_GRID) -> tuple[float, dict[float, dict]]:
        """Choose ``w`` on labelled held-out cases: the model's probabilities (N, C) for ``images`` (N, C_in, H, W).

        Sets ``self.weight``; returns ``(w, {w: {"acc", "nll"}})`` (highest accuracy, ties: the lower log loss)."""
        best, scores = choose_vote_weight(probabilities, self.vote(images), torch.as_tensor(labels), grid)
        self.weight.fill_(best)
        return best, scores

    def forward(self, probabilities: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The model's probabilities (B, C) for ``images`` fused with their vote: (B, C), rows sum to 1."""
        return fused(probabilities, self.vote(images), float(self.weight))
