"""A memory of the training images in a frozen self-supervised trunk's features whose nearest cases vote with their labels.

Why: with a trunk pre-trained without labels on the site's images (bundle ``pretrain.json``), a network fine-tuned from it
gains when fused with a k-NN vote in the frozen trunk's features (docs/design.md, Sessions 19-20; e.g. brain MRI 1% 0.557 /
0.827 against the fine-tuned plain ViT's 0.498 / 0.764, LC25000 1% 0.868 / 0.978 against 0.851 / 0.946), and a memory read
inside attention added nothing to that vote. The trunk's features were formed before any label was fitted, so a training
image's neighbours there are found as a new image's are.

``TrunkCaseVote`` keeps a frozen copy of the trunk (never trained, always in eval mode) and one unit-norm class-token
feature vector per training image with its label; the vote, its distance weights and its calibration on held-out cases
are :class:`medmem.memory.case_vote.CaseVote`'s. Its images must be what the trunk was pre-trained on: the network's
input size and channels.
"""

from __future__ import annotations

import os

import torch
from monai.utils import ensure_tuple_rep

from medmem.memory.case_vote import CaseVote
from medmem.memory.trunk_index import TrunkFeatures


class TrunkCaseVote(CaseVote, TrunkFeatures):
    """k-NN vote of stored training images' trunk features (bank (N, hidden), labels (N,), sample ids (N,), -1 where not
    given) for images (B, C, *img_size).

    Args:
        num_classes: classes the labels name.
        trunk_config: the trunk's settings as ``pretrained_trunk.pt`` records them (``medmem.networks.pretraining.
            TRUNK_SETTINGS``: img_size, patch_size, in_channels, spatial_dims, hidden_size, mlp_dim, num_layers,
            num_heads, stem); the encoder is built from them and its weights come from :meth:`load_encoder` (or a saved
            state dict). Use :meth:`from_trunk_file` to build one from a trunk file.
        k: neighbours per vote.
    """

    space = "trunk"
    evidence_key = "trunk_similar_cases"  # where predictions list the cases that voted
    trunk_hint = "build it with TrunkCaseVote.from_trunk_file (bundle case_vote.json with case_vote_space 'trunk' and pretrained_trunk)"

    def __init__(self, num_classes: int, trunk_config: dict, k: int = 10) -> None:
        from medmem.networks.memory_vit import frozen_trunk_encoder  # here: medmem.networks imports medmem.memory

        self.trunk_config = dict(trunk_config)
        super().__init__(frozen_trunk_encoder(**self.trunk_config))
        self._init_vote(num_classes, k)

    @classmethod
    def from_trunk_file(cls, path: str | os.PathLike, num_classes: int, k: int = 10) -> "TrunkCaseVote":
        """A vote (empty until :meth:`fit`) whose encoder is the trunk in ``path`` (``pretrained_trunk.pt``).

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: the file is not a trunk written by ``medmem.networks.save_pretrained_trunk``.
        """
        from medmem.networks.pretraining import read_pretrained_trunk

        saved = read_pretrained_trunk(path)
        vote = cls(num_classes, saved["config"], k)
        vote.load_encoder(saved["trunk"])
        return vote

    def descriptors(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, *img_size) -> unit-norm trunk features (B, hidden); other sizes are refused (the trunk's stem is sized)."""
        expected = (self.in_channels, *self.img_size)
        if images.dim() != 2 + len(self.img_size) or tuple(images.shape[1:]) != expected:
            raise ValueError(f"the trunk case vote takes images (B, {', '.join(map(str, expected))}), the size its trunk was "
                             f"pre-trained at; got {tuple(images.shape)}")
        return super().descriptors(images)

    @property
    def in_channels(self) -> int:
        return int(self.trunk_config["in_channels"])

    @property
    def img_size(self) -> list:
        """The input size the trunk was pre-trained at (a list, as ``MemoryViT.config`` keeps it; an int is per axis)."""
        return list(ensure_tuple_rep(self.trunk_config["img_size"], int(self.trunk_config.get("spatial_dims", 2))))

    @property
    def config(self) -> dict:
        """The constructor arguments (saved beside the state dict, which holds the encoder's weights)."""
        return {"num_classes": self.num_classes, "trunk_config": self.trunk_config, "k": self.k}
