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
    """``(views, sources)`` for MONAI engines: views (2B, C, *size) are the B first views, then the B second views
    (keys ``image`` and ``image_2`` of :func:`medmem.data.two_view_transforms`); sources (2B,) the images' source
    groups twice over (key ``source_group``, ``load_datalist(..., source_groups=True)``), or None without that key.
    Labels are never read."""

    def __call__(self, batchdata: dict, device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any):
        views = []
        for key in ("image", "image_2"):
            if key not in batchdata:
                raise KeyError(f"two-view batch has no {key!r}: build the dataset with medmem.data.two_view_transforms")
            v = batchdata[key]
            views.append(v.as_tensor() if isinstance(v, MetaTensor) else v)
        sources = batchdata.get("source_group")
        if sources is not None:
            sources = torch.as_tensor(sources).repeat(2).to(device=device, non_blocking=non_blocking)
        return torch.cat(views).to(device=device, non_blocking=non_blocking), sources


class PairedViewLoss(nn.Module):
    """NT-Xent (MONAI ``ContrastiveLoss``) between the first and second halves of a projection batch (2B, D): each
    image's other view is its positive, the other 2B - 2 views its negatives.

    Given ``sources`` (2B,) from :class:`TwoViewBatch`, views of another image of the same source group are dropped
    from the negatives (:func:`nt_xent_across_sources`): an augmented copy of the same tile is not a different image."""

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.loss = ContrastiveLoss(temperature=temperature)

    def forward(self, projections: torch.Tensor, target: Any = None) -> torch.Tensor:
        if projections.shape[0] % 2:
            raise ValueError(f"paired views need an even batch (first views, then second views), got {projections.shape[0]}")
        if target is not None:
            return nt_xent_across_sources(projections, target, self.loss.temperature)
        first, second = projections.chunk(2)
        return self.loss(first, second)


def nt_xent_across_sources(projections: torch.Tensor, sources: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over projections (2B, D), first views then second views, whose negatives are only views of other sources.

    View i's positive is view (i + B) mod 2B; its denominator sums the positive and every view whose ``sources`` (2B,)
    differs from its own. With one source per image this is MONAI's ``ContrastiveLoss`` (the tests check it)."""
    if sources.shape != projections.shape[:1]:
        raise ValueError(f"sources must be one id per view, shape {tuple(projections.shape[:1])}, got {tuple(sources.shape)}")
    z = nn.functional.normalize(projections, dim=1)
    logits = z @ z.T / temperature  # (2B, 2B)
    rows = torch.arange(len(z), device=z.device)
    positive = logits[rows, rows.roll(len(z) // 2)]  # (2B,)
    other_source = sources[:, None] != sources[None, :]
    denominator = torch.logsumexp(torch.cat([positive[:, None], logits.masked_fill(~other_source, float("-inf"))], dim=1), dim=1)
    return (denominator - positive).mean()
