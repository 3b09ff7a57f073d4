"""Training images as standardised thumbnails, and the index that finds an image's nearest training images by them.

Why: the memory ViT's own retrieval (keys, or features before the head) finds the neighbours the network's features
already agree with (docs/design.md, sessions 12-13); neighbours found in the raw, downsampled images carry what the
trained network lacks (session 14, ``benchmarks/regimes/other_space.py``). :class:`PixelNeighbourIndex` lets the
memorising attention read the stored keys/values of the training images nearest in pixels (``memory_retrieval
"pixels"``); :class:`medmem.memory.pixel_vote.PixelCaseVote` builds a label vote on the same thumbnails.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-6


class PixelThumbnails(nn.Module):
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

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        for name in self.resized_buffers:
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

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


class PixelNeighbourIndex(PixelThumbnails):
    """The training images' thumbnails by ``sample_id``; finds each image's ``k`` nearest stored images (cosine).

    A training image is looked up by its stored (un-augmented) thumbnail, not by the augmented view the network gets, so
    a training image has the same neighbours in every epoch as it would have at evaluation, and never itself.
    """

    def __init__(self, in_channels: int, size: int = 28, spatial_dims: int = 2) -> None:
        super().__init__(in_channels, size, spatial_dims)
        self.register_buffer("sample_ids", torch.zeros(0, dtype=torch.long))

    resized_buffers = ("bank", "sample_ids")

    @property
    def num_stored(self) -> int:
        return int(self.sample_ids.numel())

    @torch.no_grad()
    def fit(self, images: torch.Tensor, sample_ids: torch.Tensor) -> "PixelNeighbourIndex":
        """Store ``images`` (N, C, *spatial), un-augmented, under ``sample_ids`` (N,); the standardisation comes from them."""
        sample_ids = torch.as_tensor(sample_ids).reshape(-1).long()
        if len(images) != len(sample_ids) or len(images) == 0:
            raise ValueError(f"need one sample id per image and at least one image, got {len(images)} images and {len(sample_ids)} ids")
        if bool((sample_ids < 0).any()) or len(torch.unique(sample_ids)) != len(sample_ids):
            raise ValueError("pixel index: sample ids must be distinct and >= 0 (training images)")
        self.fit_statistics(images)
        self.bank, self.sample_ids = self.descriptors(images), sample_ids.to(self.bank.device)
        return self

    @torch.no_grad()
    def add(self, images: torch.Tensor, sample_ids: torch.Tensor) -> None:
        """Store (or replace) ``images`` under ``sample_ids`` (>= 0; others are skipped) with the fitted standardisation.
        The first add to an empty index fits it."""
        sample_ids = torch.as_tensor(sample_ids).reshape(-1).long().to(self.bank.device)
        keep = sample_ids >= 0
        images, sample_ids = images[keep.to(images.device)], sample_ids[keep]
        if len(sample_ids) == 0:
            return
        if self.num_stored == 0:
            self.fit(images, sample_ids)
            return
        new = self.descriptors(images).to(self.bank.dtype)
        position = {int(s): i for i, s in enumerate(self.sample_ids.tolist())}
        fresh = [i for i, s in enumerate(sample_ids.tolist()) if s not in position]
        for i, s in enumerate(sample_ids.tolist()):
            if s in position:
                self.bank[position[s]] = new[i]
        if fresh:
            self.bank = torch.cat([self.bank, new[fresh]])
            self.sample_ids = torch.cat([self.sample_ids, sample_ids[fresh]])

    @torch.no_grad()
    def neighbours(self, images: torch.Tensor, k: int, exclude_ids: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sample ids (B, k) of the ``k`` stored images nearest each image (B, C, *spatial) and their cosines (B, k).

        An image whose ``exclude_ids`` entry is stored is looked up by its stored thumbnail and never finds itself. Where
        fewer than ``k`` images qualify the rest are id -1 with cosine -inf."""
        if self.num_stored == 0:
            raise RuntimeError("the pixel index is empty: store the training images first (MemoryViT.fit_pixel_index)")
        b = images.shape[0]
        probe = self.descriptors(images)
        own = torch.full((b,), -1, dtype=torch.long, device=probe.device)
        if exclude_ids is not None:
            exclude_ids = exclude_ids.reshape(-1).long().to(probe.device)
            match = exclude_ids[:, None] == self.sample_ids[None, :]  # (B, N)
            found = match.any(dim=1)
            own = torch.where(found, match.float().argmax(dim=1), own)
            probe = torch.where(found[:, None], self.bank[own.clamp(min=0)], probe)
        cos = probe @ self.bank.T  # (B, N)
        cos = cos.masked_fill(F.one_hot(own.clamp(min=0), self.num_stored).bool() & (own >= 0)[:, None], float("-inf"))
        kk = min(k, self.num_stored)
        top = cos.topk(kk, dim=-1)
        ids, sims = self.sample_ids[top.indices], top.values
        ids = ids.masked_fill(~torch.isfinite(sims), -1)
        if kk < k:
            ids = torch.cat([ids, ids.new_full((b, k - kk), -1)], dim=1)
            sims = torch.cat([sims, sims.new_full((b, k - kk), float("-inf"))], dim=1)
        return ids, sims
