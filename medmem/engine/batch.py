"""Batch preparation that hands each image's ``sample_id`` to the network (for memory self-exclusion)."""

from __future__ import annotations

from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines import PrepareBatch
from monai.utils import CommonKeys


class PrepareBatchWithIds(PrepareBatch):
    """``(images, labels, (), {"sample_ids": ids})`` for MONAI engines.

    Batches without ``sample_id`` (e.g. plain folders at inference) get ids of -1: nothing excluded,
    nothing written.
    """

    def __call__(self, batchdata: dict, device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any):
        images = batchdata[CommonKeys.IMAGE]
        if isinstance(images, MetaTensor):  # plain tensors: metadata is not needed and slows every op
            images = images.as_tensor()
        images = images.to(device=device, non_blocking=non_blocking)
        labels = batchdata.get(CommonKeys.LABEL)
        if labels is not None:
            labels = torch.as_tensor(labels).long().to(device=device, non_blocking=non_blocking)
        ids = batchdata.get("sample_id")
        ids = torch.as_tensor(ids).long() if ids is not None else torch.full((images.shape[0],), -1, dtype=torch.long)
        return images, labels, (), {"sample_ids": ids.to(device)}
