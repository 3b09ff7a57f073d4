"""Training images as standardised thumbnails, and the index that finds an image's nearest training images by them.

Why: the memory ViT's own retrieval (keys, or features before the head) finds the neighbours the network's features
already agree with (docs/design.md, sessions 12-13); neighbours found in the raw, downsampled images carry what the
trained network lacks (session 14, ``benchmarks/regimes/other_space.py``). :class:`PixelNeighbourIndex` lets the
memorising attention read the stored keys/values of the training images nearest in pixels (``memory_retrieval
"pixels"``); :class:`medmem.memory.pixel_vote.PixelCaseVote` builds a label vote on the same thumbnails.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from medmem.memory.neighbour_index import ResizedBuffers, StoredNeighbours

EPS = 1e-6


class PixelThumbnails(ResizedBuffers):
    """A bank (N, C * size ** spatial_dims) of unit-norm thumbnails, standardised per pixel by the fitted mean and std."""

    def __init__(self, in_channels: int, size: int = 28, spatial_dims: int = 2) -> None:
        super().__init__()
        if in_channels < 1 or size < 1 or spatial_dims not in (2, 3):
            raise ValueError(f"thumbnails need in_channels, size >= 1 and spatial_dims 2 or 3; got {in_channels}, {size}, {spatial_dims}")
        self.in_channels, self.size, self.spatial_dims = in_channels, size, spatial_dims
        dim = in_channels * size**spatial_dims
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("bank", torch.zeros(0, dim))

    # buffers whose length is the number of stored images: their size comes from the checkpoint
    resized_buffers: Tuple[str, ...] = ("bank",)

    def thumbnails(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> (B, C * size ** spatial_dims): area-downsampled, before standardising."""
        if images.dim() != 2 + self.spatial_dims or images.shape[1] != self.in_channels:
            raise ValueError(f"expected images (B, {self.in_channels}, {'H, W' if self.spatial_dims == 2 else 'D, H, W'}), got {tuple(images.shape)}")
        return F.interpolate(images.float(), size=(self.size,) * self.spatial_dims, mode="area").flatten(1)

    def descriptors(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> unit-norm standardised thumbnails (B, C * size ** spatial_dims)."""
        return F.normalize((self.thumbnails(images) - self.mean) / self.std, dim=-1)

    @torch.no_grad()
    def fit_statistics(self, images: torch.Tensor) -> None:
        """Per-pixel mean and std of the thumbnails of ``images`` (N, C, *spatial)."""
        thumbs = self.thumbnails(images)
        self.mean, self.std = thumbs.mean(0), thumbs.std(0, unbiased=False).clamp(min=EPS)


class PixelNeighbourIndex(StoredNeighbours, PixelThumbnails):
    """The training images' thumbnails by ``sample_id``; finds each image's ``k`` nearest stored images (cosine,
    :class:`~medmem.memory.neighbour_index.StoredNeighbours`)."""

    empty_hint = "store the training images first (MemoryViT.fit_pixel_index)"

    def __init__(self, in_channels: int, size: int = 28, spatial_dims: int = 2) -> None:
        super().__init__(in_channels, size, spatial_dims)
        self.register_buffer("sample_ids", torch.zeros(0, dtype=torch.long))

    resized_buffers = ("bank", "sample_ids")
