"""The training images by the class-token features of a frozen, self-supervised trunk (:class:`TrunkFeatures`), and the
index that finds an image's nearest training images by them (``memory_retrieval="trunk"``); the trunk-space case vote
(:class:`medmem.memory.trunk_vote.TrunkCaseVote`) stores the same features.

Why: the memory ViT's own retrieval (its keys, trained with the labels) finds the neighbours its features already agree
with, and on the images it has fitted it learns to trust them (docs/design.md, sessions 12-16). A k-NN on the features of
the trunk pre-trained without labels beat every network fine-tuned from it at brain MRI 1% (session 18): features formed
before any label is fitted mean the same on training and on new images. This index keeps a frozen copy of that trunk to
choose which training images' memory entries the class token reads, while the network itself fine-tunes.
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from medmem.memory.neighbour_index import ResizedBuffers, StoredNeighbours


class TrunkFeatures(ResizedBuffers):
    """A bank (N, hidden) of unit-norm class-token features of a frozen pre-trained trunk.

    Args:
        encoder: a module with ``forward_features(images (B, C, *spatial)) -> (B, hidden)`` and a final ``norm``
            (a :class:`~medmem.networks.MemoryViT` with its memory off); its weights come from a pre-trained trunk
            (:meth:`load_encoder`), are never trained and stay in eval mode.
    """

    resized_buffers = ("bank",)
    # how to give it a trunk, for the refusal of one that has none
    trunk_hint = "load one (load_encoder) before storing images"

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder.requires_grad_(False).eval()
        hidden = encoder.norm.normalized_shape[0]
        self.register_buffer("bank", torch.zeros(0, hidden))
        # whether load_encoder has run (saved with the model, so a checkpoint brings its trunk)
        self.register_buffer("encoder_loaded", torch.zeros((), dtype=torch.bool))

    def train(self, mode: bool = True) -> "TrunkFeatures":
        super().train(mode)
        self.encoder.eval()  # frozen: no dropout in training either
        return self

    @torch.no_grad()
    def load_encoder(self, trunk_state: Dict[str, torch.Tensor]) -> None:
        """Copy a pre-trained trunk (``medmem.networks.pretraining`` keys) into the encoder; every trunk weight must be
        there."""
        from medmem.networks.pretraining import is_trunk_key  # here: medmem.networks imports this module

        missing, _ = self.encoder.load_state_dict(trunk_state, strict=False)
        missing = [k for k in missing if is_trunk_key(k)]
        if missing:
            raise ValueError(f"the pre-trained trunk lacks weights the {type(self).__name__} needs: {missing[:3]}")
        self.encoder_loaded.fill_(True)

    def _require_encoder(self) -> None:
        """Refuse an encoder that has no trunk: random weights would find random neighbours."""
        if not bool(self.encoder_loaded):
            raise ValueError(f"{type(self).__name__} finds neighbours with a pre-trained trunk: {self.trunk_hint}")

    def fit_statistics(self, images: torch.Tensor) -> None:
        """Nothing to fit (the features are compared as they are); refuses an encoder that has no trunk."""
        self._require_encoder()

    @torch.no_grad()
    def descriptors(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> unit-norm trunk class-token features (B, hidden), in batches of 256."""
        self._require_encoder()
        feats = [self.encoder.forward_features(images[i : i + 256]) for i in range(0, len(images), 256)]
        return F.normalize(torch.cat(feats).float(), dim=-1)


class TrunkNeighbourIndex(StoredNeighbours, TrunkFeatures):
    """The training images' trunk features (N, hidden) by ``sample_id``; finds each image's ``k`` nearest stored images
    (cosine, :class:`~medmem.memory.neighbour_index.StoredNeighbours`)."""

    empty_hint = "store the training images first (MemoryViT.fit_pixel_index; the bundle's pixel_index_loader step does it)"
    trunk_hint = "build the network with one (bundle pretrained_trunk, or medmem.networks.load_pretrained_trunk) before storing images"
    resized_buffers = ("bank", "sample_ids")

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__(encoder)
        self.register_buffer("sample_ids", torch.zeros(0, dtype=torch.long))
