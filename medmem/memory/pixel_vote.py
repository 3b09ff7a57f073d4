"""A memory of the training images in pixel space whose nearest cases vote with their labels.

Why pixels: the memory ViT's read (inside attention, or as a readout before the head) finds its neighbours in the
network's own feature space, and there they say what the features already say (docs/design.md, sessions 12-13).
``benchmarks/regimes/other_space.py`` (session 14) found neighbours in the raw, downsampled images that add what the
trained head lacks on brain MRI and LC25000 (2-5 ACC points fused with the plain ViT), while neighbours from the stem
or inner blocks add little. The network never sees these thumbnails as such: they hold orientation, intensity and
colour cues the training augmentation teaches the network to ignore.

``PixelCaseVote`` stores one standardised thumbnail (``size`` x ``size``, every channel) per training image with its
label; the vote, its distance weights and its calibration on held-out cases are :class:`medmem.memory.case_vote.CaseVote`'s.
"""

from __future__ import annotations

import torch

from medmem.memory.case_vote import DISTANCE_POWER_GRID, CaseVote
from medmem.memory.pixel_index import PixelThumbnails

__all__ = ["DISTANCE_POWER_GRID", "PixelCaseVote"]  # the grid stays importable from here (the study driver's import)


class PixelCaseVote(CaseVote, PixelThumbnails):
    """k-NN vote of stored training thumbnails (bank (N, C * size * size), labels (N,), sample ids (N,), -1 where not
    given) for images (B, C, H, W); the sample ids name the cases behind a vote (``nearest``)."""

    space = "pixels"
    evidence_key = "pixel_similar_cases"  # where predictions list the cases that voted

    def __init__(self, num_classes: int, in_channels: int, size: int = 28, k: int = 10) -> None:
        super().__init__(in_channels, size, spatial_dims=2)
        self._init_vote(num_classes, k)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        if prefix + "sample_ids" not in state_dict and prefix + "labels" in state_dict:
            # files from before the sample ids (bundle 0.4.0-0.5.0): the cases stay unnamed
            state_dict[prefix + "sample_ids"] = torch.full_like(state_dict[prefix + "labels"], -1)
        if prefix + "power" not in state_dict and prefix + "weight" in state_dict:
            state_dict[prefix + "power"] = torch.ones((), dtype=torch.float64)  # before bundle 0.6.0: scikit-learn's 1 / d
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    @property
    def config(self) -> dict:
        """The constructor arguments (saved beside the state dict)."""
        return {"num_classes": self.num_classes, "in_channels": self.in_channels, "size": self.size, "k": self.k}
