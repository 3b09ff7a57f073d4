"""Self-supervised pre-training of the ViT trunk on unlabelled images, and loading that trunk into a classifier.

Why: every memory read measured in docs/design.md acts only through training, because a network trained from scratch
on a few hundred labels fits its training images and the read learns to trust features that do not carry to new
images. A trunk pre-trained without labels (here SimCLR-style instance discrimination, Chen et al. 2020, on the
training split's images) gives features formed before any label is fitted, so that the memory would store and retrieve
in a space that means the same on training and on new images. Measured in docs/design.md "Session 18": the plain ViT and a
k-NN on these features gain from it; the memory read, as built, does not.

The trunk is everything but the memory and the head: the stem, the class token, the attention and MLP weights of
every block, the final norm (``is_trunk_key``). Memory buffers, the memory read's own scalars, prototypes, the readout
and the classification head start fresh in the classifier.
"""

from __future__ import annotations

import os
import re
from typing import Dict

import torch
from torch import nn

# state-dict keys of a MemoryViT that pre-training learns and a classifier inherits
_TRUNK = re.compile(r"^(cls_token|patch_embedding\..+|norm\.(weight|bias)|blocks\.\d+\.(norm1|norm2|mlp|attn\.qkv|attn\.out_proj)\..+)$")
# layout version of pretrained_trunk.pt: bump when the saved dict changes
FORMAT = 1
# MemoryViT settings a trunk is tied to: a network that differs in one cannot take its weights
TRUNK_SETTINGS = ("img_size", "patch_size", "in_channels", "spatial_dims", "hidden_size", "mlp_dim", "num_layers", "num_heads", "stem")


def is_trunk_key(key: str) -> bool:
    """Whether a MemoryViT state-dict key belongs to the trunk that pre-training learns."""
    return _TRUNK.match(key) is not None


class ContrastivePretrainer(nn.Module):
    """A MemoryViT trunk (memory off) with a projection head, for instance discrimination between two views.

    Args:
        trunk: a :class:`~medmem.networks.MemoryViT` built as the classifier will be (same stem, sizes, input); its
            memory is switched off here and never written.
        projection_dim: size of the projected embedding the contrastive loss compares.

    ``forward`` maps images (2B, C, *img_size), the first views of B images then their second views, to projections
    (2B, projection_dim). The projection head is dropped after pre-training (Chen et al. 2020: the representation
    before it transfers better).
    """

    def __init__(self, trunk: nn.Module, projection_dim: int = 128) -> None:
        super().__init__()
        trunk.set_memory_mode("off")
        self.trunk = trunk
        hidden = trunk.norm.normalized_shape[0]
        self.projection = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, projection_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.trunk.forward_features(x))

    def trunk_state(self) -> Dict[str, torch.Tensor]:
        """The trunk's learned weights (``is_trunk_key``), as a classifier loads them."""
        return {k: v.detach().clone() for k, v in self.trunk.state_dict().items() if is_trunk_key(k)}


def save_pretrained_trunk(pretrainer: ContrastivePretrainer, path: str | os.PathLike, images: int, epochs: int, recipe: dict | None = None) -> None:
    """Write the trunk (``{"format", "trunk", "config", "images", "epochs", "recipe"}``) atomically to ``path``.

    ``recipe``: the pre-training settings that shaped the trunk but are not in its weights' layout (the bundle records
    learning rate, batch size, temperature, projection size, regime, ``source_groups`` and seed), so that a trunk file says how it was made.
    Their values must be plain numbers, strings or booleans (the file is read with ``weights_only=True``).
    """
    from medmem.atomic import torch_save_atomic

    recipe = dict(recipe or {})
    odd = {k: type(v).__name__ for k, v in recipe.items() if not isinstance(v, (bool, int, float, str))}
    if odd:
        raise TypeError(f"{path}: pre-training recipe values must be numbers, strings or booleans, got {odd}")
    config = {k: pretrainer.trunk.config[k] for k in TRUNK_SETTINGS}
    saved = {"format": FORMAT, "trunk": pretrainer.trunk_state(), "config": config, "images": int(images), "epochs": int(epochs), "recipe": recipe}
    torch_save_atomic(saved, path)


def read_pretrained_trunk(path: str | os.PathLike) -> dict:
    """The dict :func:`save_pretrained_trunk` wrote (``{"format", "trunk", "config", "images", "epochs", "recipe"}``;
    trunks written before bundle 0.11.0 have no ``recipe``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not such a trunk (the message names the file).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no pre-trained trunk there (make one with the bundle's pretrain.json)")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != FORMAT or "trunk" not in saved or "config" not in saved:
        raise ValueError(f"{path}: not a medmem pre-trained trunk (format {FORMAT}); got keys {sorted(saved)[:5] if isinstance(saved, dict) else type(saved).__name__}")
    return saved


def load_pretrained_trunk(network: nn.Module, path: str | os.PathLike | None) -> nn.Module:
    """Copy a pre-trained trunk into ``network`` (a MemoryViT) and return it; ``None`` or ``""`` returns it untouched.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a trunk written by :func:`save_pretrained_trunk`, or it was pre-trained for another
            input or size (the message names the file and the first setting or weight that differs).
    """
    if path is None or str(path) == "":
        return network
    saved = read_pretrained_trunk(path)
    mine = getattr(network, "config", None)
    if not isinstance(mine, dict) or "stem" not in mine:
        raise ValueError(f"{path}: a pre-trained trunk loads into a MemoryViT, not a {type(network).__name__}")
    for key, value in saved["config"].items():
        if key in mine and mine[key] != value:  # MemoryViT.config keeps sizes as lists, as the file does
            raise ValueError(f"{path}: trunk pre-trained with {key}={value}, this network has {key}={mine[key]}")
    own = network.state_dict()
    wanted = {k for k in own if is_trunk_key(k)}
    if wanted != set(saved["trunk"]):
        missing = sorted(wanted - set(saved["trunk"]))[:3]
        extra = sorted(set(saved["trunk"]) - wanted)[:3]
        raise ValueError(f"{path}: trunk weights do not match this network (missing {missing}, unexpected {extra})")
    for key, value in saved["trunk"].items():
        if own[key].shape != value.shape:
            raise ValueError(f"{path}: weight {key} has shape {tuple(value.shape)}, this network needs {tuple(own[key].shape)}")
    network.load_state_dict(saved["trunk"], strict=False)
    index = getattr(network, "trunk_index", None)
    if index is not None:  # memory_retrieval "trunk": the index keeps a frozen copy to find neighbours with
        index.load_encoder(saved["trunk"])
    return network

