"""Batch preparation that hands each image's ``sample_id`` to the network (for memory self-exclusion), and the
stacking of a whole loader into tensors (to build a memory from a split)."""

from __future__ import annotations

from typing import Any, Iterable

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


def stack_batches(batches: Iterable[dict], *keys: str) -> tuple[torch.Tensor, ...]:
    """All images (N, C, *spatial) and the values (N,) of each of ``keys`` (default ``label``; or ``sample_id``, ...)
    of a loader of ``{"image", *keys}`` batches, on the CPU: ``(images, *values)``."""
    keys = keys or ("label",)
    images: list[torch.Tensor] = []
    values: list[list[torch.Tensor]] = [[] for _ in keys]
    for batch in batches:
        images.append(torch.as_tensor(batch["image"]).cpu())
        for key, stacked in zip(keys, values):
            stacked.append(torch.as_tensor(batch[key]).reshape(-1).long())
    if not images:
        raise ValueError("no images to build the memory from (empty split)")
    return (torch.cat(images), *(torch.cat(v) for v in values))
