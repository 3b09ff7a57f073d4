"""Fill a MemoryViT's neighbour index (``memory_retrieval`` ``pixels`` or ``trunk``) from the training images before training."""

from __future__ import annotations

import logging
from typing import Callable, Iterable

import torch

from medmem.engine.batch import stack_batches
from medmem.engine.handlers import unwrap

logger = logging.getLogger(__name__)


def fit_pixel_index(network: torch.nn.Module, make_loader: Callable[[], Iterable[dict]]) -> int:
    """Store the training images of ``make_loader()`` (un-augmented ``{"image", "sample_id"}`` batches) in the network's
    neighbour index (pixels or trunk); returns how many. A network that retrieves by its own keys has no index: no loader is built, 0 is
    returned. Why a loader factory: MONAI's ``DataLoader`` draws a seed from the global generator when it is built, which
    would change how every other network's training images are shuffled (the config passes it with ``"_mode_": "callable"``: a partial)."""
    model = unwrap(network)
    index = getattr(model, "neighbour_index", None)
    if index is None:
        return 0
    images, sample_ids = stack_batches(make_loader(), "sample_id")
    device = next(model.parameters()).device
    model.fit_pixel_index(images.to(device), sample_ids.to(device))
    logger.info("%s: %d training images stored", type(index).__name__, len(sample_ids))
    return len(sample_ids)
