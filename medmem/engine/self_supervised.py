"""What the bundle's ``pretrain.json`` runs with MONAI's ``SupervisedTrainer``: two augmented views of each image
in, a contrastive loss between their projections out (no labels read)."""

from __future__ import annotations

from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines import PrepareBatch
from monai.losses import ContrastiveLoss
from torch import nn


class TwoViewBatch(PrepareBatch):
    """``(views, None)`` for MONAI engines: views (2B, C, *size) are the B first views, then the B second views
    (keys ``image`` and ``image_2`` of :func:`medmem.data.two_view_transforms`). Labels are never read."""

    def __call__(self, batchdata: dict, device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any):
        views = []
        for key in ("image", "image_2"):
            if key not in batchdata:
                raise KeyError(f"two-view batch has no {key!r}: build the dataset with medmem.data.two_view_transforms")
            v = batchdata[key]
            views.append(v.as_tensor() if isinstance(v, MetaTensor) else v)
        return torch.cat(views).to(device=device, non_blocking=non_blocking), None


class PairedViewLoss(nn.Module):
    """NT-Xent (MONAI ``ContrastiveLoss``) between the first and second halves of a projection batch (2B, D): each
    image's other view is its positive, the other 2B - 2 views its negatives."""

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.loss = ContrastiveLoss(temperature=temperature)

    def forward(self, projections: torch.Tensor, target: Any = None) -> torch.Tensor:
        if projections.shape[0] % 2:
            raise ValueError(f"paired views need an even batch (first views, then second views), got {projections.shape[0]}")
        first, second = projections.chunk(2)
        return self.loss(first, second)
