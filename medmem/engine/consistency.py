"""Consistency training on the unlabelled rest of a training split (FixMatch-style; Sohn et al., NeurIPS 2020).

Self-training labels the unlabelled images once, with a teacher trained before (``medmem.engine.pseudo_label``); here
the network labels them itself at every step, so the labels improve as it does. Each training step takes, beside its
labelled batch (B images), ``ratio`` x B unlabelled images in two views (``medmem.data.consistency_view_transforms``):
the network, in eval mode and without gradient, predicts the weak view; where its top class probability is at least
``threshold`` that class becomes the target of the strong view, which joins the batch. The strong views of the images
below the threshold join with target -100, which cross-entropy ignores, so the step's loss is the mean cross-entropy
over the labelled images and the confident unlabelled ones. The unlabelled images' true labels are dropped before they
are loaded, so nothing here can read them.

Open to the memory networks: the appended rows have sample id -1, so they read the memory as any image does (nothing
of theirs to exclude) and are never written to it (``medmem.memory.store.forward_rows``); an unconfident row's target
-100 is no class of the memory's contrastive loss either. Not with mixup, which replaces the batch it would extend.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Iterator

import torch
from monai.data import DataLoader, Dataset

from medmem.data.datalist import load_datalist
from medmem.data.manifest import load_manifest
from medmem.data.pseudo_labels import unlabelled_indices
from medmem.data.transforms import consistency_view_transforms
from medmem.engine.batch import PrepareBatchWithIds

IGNORED = -100  # torch.nn.CrossEntropyLoss's default ignore_index
logger = logging.getLogger(__name__)


def unlabelled_items(manifest: str | os.PathLike | dict, regime: int | str, data_root: str | os.PathLike | None = None) -> list[dict]:
    """Datalist items of the training images outside ``regime``, without their labels (``image`` and ``sample_id``)."""
    source = manifest if isinstance(manifest, dict) else load_manifest(manifest)
    items = load_datalist(source, "training", data_root)
    return [{k: v for k, v in items[i].items() if k != "label"} for i in unlabelled_indices(source, regime)]


class UnlabelledStream:
    """Endless batches of (weak, strong) views, (U, C, *spatial) each, of ``items``, reshuffled on every pass by a
    generator seeded with ``seed`` (a resumed run starts the sequence again, as mixup's does)."""

    def __init__(self, items: list[dict], transform: Any, batch_size: int, seed: int = 0, num_workers: int = 0) -> None:
        if not items:
            raise ValueError("consistency training needs unlabelled images: the regime holds every training image")
        generator = torch.Generator().manual_seed(int(seed))
        self.loader = DataLoader(Dataset(items, transform=transform), batch_size=batch_size, shuffle=True, drop_last=len(items) >= batch_size,
                                 num_workers=num_workers, generator=generator)  # fmt: skip
        self._batches: Iterator[dict] | None = None
        self.passes = 0  # completed passes over the unlabelled images

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = None if self._batches is None else next(self._batches, None)
        if batch is None:
            self.passes += int(self._batches is not None)
            self._batches = iter(self.loader)
            batch = next(self._batches)
        return batch["image"], batch["image_strong"]


class ConsistencyBatch(PrepareBatchWithIds):
    """Training batches (B + U images) with the unlabelled strong views appended: targets (B + U,) are the labels, then
    the network's confident class of each weak view or -100 (ignored). Sample ids of the appended rows are -1.

    How much of the unlabelled data trains: ``confident`` / ``seen`` count the unlabelled images above ``threshold`` and
    all of them since the last pass over the unlabelled images, whose share is logged at the end of each pass."""

    def __init__(self, network: torch.nn.Module, stream: UnlabelledStream, threshold: float = 0.95) -> None:
        super().__init__()
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"consistency_threshold must be within (0, 1], got {threshold}")
        self.network, self.stream, self.threshold = network, stream, float(threshold)
        self.confident, self.seen, self._pass = 0, 0, 0

    def __call__(self, batchdata: dict, device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any):
        images, labels, args, network_kwargs = super().__call__(batchdata, device, non_blocking, **kwargs)
        if labels is None:
            raise ValueError("consistency training needs the labelled batch's 'label'")
        weak, strong = (v.to(device=device, non_blocking=non_blocking) for v in self.stream.next())
        was_training = self.network.training
        self.network.eval()  # no dropout in the prediction that labels
        try:
            with torch.no_grad():
                confidence, predicted = self.network(weak).softmax(-1).max(-1)
        finally:
            self.network.train(was_training)
        confident = confidence >= self.threshold
        if self.stream.passes != self._pass:  # a pass over the unlabelled images ended before this batch
            logger.info("unlabelled pass %d: %d of %d images (%.1f%%) at or above %.2f", self._pass + 1, self.confident, self.seen,
                        100.0 * self.confident / max(1, self.seen), self.threshold)  # fmt: skip
            self.confident, self.seen, self._pass = 0, 0, self.stream.passes
        self.confident, self.seen = self.confident + int(confident.sum()), self.seen + len(confident)
        targets = torch.where(confident, predicted, torch.full_like(predicted, IGNORED))
        ids = network_kwargs["sample_ids"]
        network_kwargs["sample_ids"] = torch.cat([ids, torch.full((len(strong),), -1, dtype=ids.dtype, device=ids.device)])
        return torch.cat([images, strong.to(images.dtype)]), torch.cat([labels.reshape(-1), targets]), args, network_kwargs


def smoothed_top_probability(label_smoothing: float, num_classes: int) -> float:
    """The top class probability that cross-entropy with label smoothing e over C classes trains towards: 1 - e + e / C
    (0.9125 for 0.1 over 8). A confidence threshold above it is rarely reached."""
    return 1 - label_smoothing + label_smoothing / num_classes


def warn_if_above_smoothed_top(setting: str, threshold: float, label_smoothing: float, num_classes: int | None, consequence: str) -> bool:
    """Warn (and return True) when confidence threshold ``setting`` = ``threshold`` is above ``smoothed_top_probability``:
    a network trained with that smoothing seldom reaches it, so few images pass (``consequence`` says what that costs)."""
    if not num_classes or label_smoothing <= 0:
        return False
    bound = smoothed_top_probability(label_smoothing, num_classes)
    if float(threshold) <= bound:
        return False
    warnings.warn(f"{setting} {threshold} is above {bound:.4f}, the top probability that "
                  f"label_smoothing {label_smoothing} over {num_classes} classes trains towards: {consequence}", stacklevel=3)  # fmt: skip
    return True


def consistency_batches(
    network: torch.nn.Module,
    manifest: str | os.PathLike | dict,
    regime: int | str,
    data_root: str | os.PathLike | None,
    ratio: float,
    threshold: float,
    batch_size: int,
    image_size: int,
    in_channels: int,
    spatial_dims: int = 2,
    seed: int = 0,
    rotate90: bool = True,
    num_workers: int = 0,
    label_smoothing: float = 0.0,
    num_classes: int | None = None,
) -> ConsistencyBatch | None:
    """The bundle's consistency batches (``unlabelled_ratio`` > 0), or None (0: off).

    Warns when ``threshold`` is above what cross-entropy with ``label_smoothing`` e over ``num_classes`` C trains the top
    probability towards, ``1 - e + e / C`` (PBC, 0.1 over 8: 0.9125): few unlabelled images would ever count (session 31:
    3.3% of PBC's at 0.95 over the first pass)."""
    ratio = float(ratio)
    if ratio < 0:
        raise ValueError(f"unlabelled_ratio must be >= 0 (0: off), got {ratio}")
    if ratio == 0:
        return None
    warn_if_above_smoothed_top("consistency_threshold", threshold, label_smoothing, num_classes, "few unlabelled images will count")
    transform = consistency_view_transforms(image_size, in_channels, spatial_dims, rotate90=rotate90)
    transform.set_random_state(seed=int(seed))
    stream = UnlabelledStream(unlabelled_items(manifest, regime, data_root), transform, max(1, round(ratio * int(batch_size))), seed, num_workers)
    return ConsistencyBatch(network, stream, threshold)
