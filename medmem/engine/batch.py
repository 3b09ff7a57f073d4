"""Batch preparation that hands each image's ``sample_id`` to the network (for memory self-exclusion), mixup of training
batches (a plain ViT's regulariser), and the stacking of a whole loader into tensors (to build a memory from a split)."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from monai.data import MetaTensor
from monai.engines import PrepareBatch
from monai.transforms import MixUp
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


class MixUpBatch(PrepareBatchWithIds):
    """Training batches mixed pairwise (mixup, Zhang et al. 2018, by MONAI's ``MixUp``): images (B, C, *spatial) become
    ``lam * x + (1 - lam) * x[perm]`` with one ``lam ~ Beta(alpha, alpha)`` per image, and the target the same mix of the
    two one-hot labels (B, num_classes), float; :class:`medmem.engine.losses.MemoryAwareLoss` reads it as class
    probabilities.

    A mixed image is no training image, so its sample id is -1 (the network writes and excludes nothing for it).
    ``seed`` makes the mixing repeatable (MONAI's ``set_determinism`` does not reach a transform's own random state); a
    resumed run starts the mixing sequence from the seed again, as its data loader's shuffling does.
    """

    def __init__(self, alpha: float, num_classes: int, seed: int = 0) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"mixup needs num_classes >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.mixer = MixUp(batch_size=1, alpha=alpha)  # raises for alpha <= 0; sized per batch below
        self.mixer.set_random_state(seed=int(seed))

    def __call__(self, batchdata: dict, device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any):
        images, labels, args, network_kwargs = super().__call__(batchdata, device, non_blocking, **kwargs)
        if labels is None:
            raise ValueError("mixup mixes labels too: the training batch has no 'label'")
        onehot = torch.nn.functional.one_hot(labels.reshape(-1), self.num_classes).to(images.dtype)
        self.mixer.batch_size = len(images)  # the last batch of an epoch may be smaller
        # MONAI's MixUp mixes tensors shaped as images (B, C, H, W[, D]): the labels go as (B, num_classes, 1, 1)
        mixed, targets = self.mixer(images, onehot[:, :, None, None])
        network_kwargs["sample_ids"] = torch.full_like(network_kwargs["sample_ids"], -1)
        return mixed, targets.reshape(len(images), self.num_classes), args, network_kwargs


def training_batches(mixup_alpha: float, num_classes: int, memory_mode: str, seed: int = 0, consistency: PrepareBatchWithIds | None = None) -> PrepareBatchWithIds:
    """The bundle's training batch preparation: plain (``mixup_alpha`` 0), mixed (:class:`MixUpBatch`) or with the
    unlabelled images of consistency training (``consistency``: a ``medmem.engine.consistency.ConsistencyBatch``).

    Mixup is for networks without a memory (``memory_mode`` ``"off"``): a memory writes each training image's entries
    under its sample id and votes with its label, and a mix of two images is neither's. Consistency training keeps the
    labelled rows as they are and appends the unlabelled ones with id -1, which read the memory but are never written
    to it (``medmem.memory.store.forward_rows``), so it is open to every network; the two do not combine."""
    if mixup_alpha < 0:
        raise ValueError(f"mixup_alpha must be >= 0 (0: no mixup), got {mixup_alpha}")
    if consistency is not None:
        if mixup_alpha > 0:
            raise ValueError(f"consistency training (unlabelled_ratio > 0) needs mixup_alpha 0, got {mixup_alpha}")
        return consistency
    if mixup_alpha == 0:
        return PrepareBatchWithIds()
    if memory_mode != "off":
        raise ValueError(f"mixup_alpha {mixup_alpha} needs memory_mode 'off' (a memory stores and votes with unmixed training "
                         f"images), got memory_mode {memory_mode!r}")
    return MixUpBatch(mixup_alpha, num_classes, seed)


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
