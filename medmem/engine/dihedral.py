"""Test-time averaging over the eight flips and right-angle turns of a 2D image (the dihedral group D4).

The training recipe already draws flips and right-angle turns (``medmem.data.augmentations``), so a trained network
has seen every one of these views; averaging its class probabilities over them removes the orientation it happens
to prefer. Opt-in at evaluation (bundle ``eval_dihedral``); off by default, since it costs eight forward passes.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer


def dihedral_views(images: torch.Tensor) -> list[torch.Tensor]:
    """The 8 views of a batch of square 2D images (B, C, H, H): 4 right-angle turns of the images and of their mirror
    image (the first view is the batch itself). Refuses 3D batches and non-square images, whose turns would not fit
    the network's input size."""
    if images.dim() != 4:
        raise ValueError(f"dihedral views need a batch of 2D images (B, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"dihedral views need square images (a turn would change the size), got {tuple(images.shape[-2:])}")
    mirrored = images.flip(-1)
    return [torch.rot90(view, k, dims=(-2, -1)) for view in (images, mirrored) for k in range(4)]


def dihedral_probabilities(network: Any, images: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """Softmax of ``network`` (which returns logits (B, num_classes)) averaged over the 8 dihedral views: (B, num_classes).

    The images as given are run last, so that what a memorising layer records of its last forward pass (evidence:
    similar cases, attention maps, familiarity) is about the image itself, not one of its turns."""
    itself, *turned = dihedral_views(images)
    turned_probabilities = [torch.softmax(network(view, *args, **kwargs), dim=-1) for view in turned]
    own = torch.softmax(network(itself, *args, **kwargs), dim=-1)
    return torch.stack([own, *turned_probabilities]).mean(0)


class DihedralInferer(Inferer):
    """A MONAI inferer whose output is ``log(mean over the 8 views of softmax(network(view)))`` (B, num_classes), so that
    the evaluator's softmax post-processing gives back the averaged probabilities."""

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.log(dihedral_probabilities(network, inputs, *args, **kwargs).clamp(min=1e-8))
