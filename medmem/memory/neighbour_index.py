"""The search shared by the indexes that choose which training images' memory entries the class token reads.

An index holds one unit-norm descriptor per training image (``bank`` (N, D)) under its ``sample_id`` and finds an image's
``k`` nearest stored images by cosine. What a descriptor is belongs to the index: a standardised pixel thumbnail
(:class:`medmem.memory.pixel_index.PixelNeighbourIndex`) or the class-token features of a frozen pre-trained trunk
(:class:`medmem.memory.trunk_index.TrunkNeighbourIndex`).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class ResizedBuffers(nn.Module):
    """A module whose buffers named in ``resized_buffers`` grow with the stored images: a checkpoint sets their size."""

    resized_buffers: Tuple[str, ...] = ()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        for name in self.resized_buffers:
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)


class StoredNeighbours:
    """Mixin over buffers ``bank`` (N, D) and ``sample_ids`` (N,): store, replace and search training images.

    The class using it supplies ``descriptors(images) -> (B, D)`` (unit norm) and ``fit_statistics(images)`` (whatever the
    descriptors are standardised by, fitted on the training images; may do nothing), and says in ``empty_hint`` how to
    fill an empty index. A training image is looked up by its stored (un-augmented) descriptor, not by the augmented view
    the network gets, so it has the same neighbours in every epoch as at evaluation, and never itself.
    """

    bank: torch.Tensor
    sample_ids: torch.Tensor
    empty_hint = "store the training images first"
    # (no stubs for descriptors / fit_statistics here: as the first base they would hide the using class's own)

    @property
    def num_stored(self) -> int:
        return int(self.sample_ids.numel())

    @torch.no_grad()
    def fit(self, images: torch.Tensor, sample_ids: torch.Tensor):
        """Store ``images`` (N, C, *spatial), un-augmented, under ``sample_ids`` (N,); the standardisation comes from them."""
        sample_ids = torch.as_tensor(sample_ids).reshape(-1).long()
        if len(images) != len(sample_ids) or len(images) == 0:
            raise ValueError(f"need one sample id per image and at least one image, got {len(images)} images and {len(sample_ids)} ids")
        if bool((sample_ids < 0).any()) or len(torch.unique(sample_ids)) != len(sample_ids):
            raise ValueError(f"{type(self).__name__}: sample ids must be distinct and >= 0 (training images)")
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

        An image whose ``exclude_ids`` entry is stored is looked up by its stored descriptor and never finds itself. Where
        fewer than ``k`` images qualify the rest are id -1 with cosine -inf."""
        if self.num_stored == 0:
            raise RuntimeError(f"the {type(self).__name__} is empty: {self.empty_hint}")
        b = images.shape[0]
        own = torch.full((b,), -1, dtype=torch.long, device=self.bank.device)
        stored = torch.zeros(b, dtype=torch.bool, device=self.bank.device)
        if exclude_ids is not None:
            exclude_ids = exclude_ids.reshape(-1).long().to(self.bank.device)
            match = exclude_ids[:, None] == self.sample_ids[None, :]  # (B, N)
            stored = match.any(dim=1)
            own = torch.where(stored, match.float().argmax(dim=1), own)
        # only images not stored are described afresh (for a trunk index this skips its forward on a training batch)
        probe = self.bank[own.clamp(min=0)].clone()
        if not bool(stored.all()):
            probe[~stored] = self.descriptors(images[~stored.to(images.device)]).to(probe.dtype)
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
