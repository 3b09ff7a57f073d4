"""Convolutional stem for the ViT: patch tokens made by a few strided convolutions instead of one linear
projection per patch (Xiao et al., "Early convolutions help transformers see better", NeurIPS 2021).

Why: trained from scratch on a few hundred images, a ViT's patch projection learns little; in the
regime study a MONAI ResNet-18 at 3% of PBC beats every ViT, even the plain ViT trained on all of it
(``benchmarks/results/regimes.md``), and the memory can only recall neighbours as good as the
representation finds. Strided 3x3 convolutions give the tokens the locality prior of a CNN while the
transformer, its memory and everything downstream stay the same.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn


class ConvStemEmbedding(nn.Module):
    """(B, C, *img_size) -> patch tokens (B, N, hidden_size), N = prod(img_size // patch_size).

    log2(patch_size) stride-2 3x3 convolutions (batch norm, ReLU; widths 32, 64, ... up to hidden_size),
    then a 1x1 convolution to ``hidden_size``, a learnable position embedding and dropout: the same
    output as MONAI's ``PatchEmbeddingBlock``, so it replaces it in place.
    """

    def __init__(
        self, in_channels: int, img_size: Sequence[int], patch_size: Sequence[int], hidden_size: int,
        spatial_dims: int = 2, dropout_rate: float = 0.0, first_width: int = 32,
    ) -> None:  # fmt: skip
        super().__init__()
        sizes = set(patch_size)
        if len(sizes) != 1 or (p := sizes.pop()) < 2 or p & (p - 1):
            raise ValueError(f"stem 'conv' needs one power-of-two patch size of at least 2, got {tuple(patch_size)}")
        layers, width, channels = [], first_width, in_channels
        for _ in range(int(math.log2(p))):
            layers.append(Convolution(spatial_dims, channels, width, strides=2, kernel_size=3, act="RELU", norm="BATCH"))
            channels, width = width, min(width * 2, hidden_size)
        layers.append(Convolution(spatial_dims, channels, hidden_size, kernel_size=1, conv_only=True))
        self.convs = nn.Sequential(*layers)
        n_patches = math.prod(i // q for i, q in zip(img_size, patch_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, n_patches, hidden_size))
        nn.init.trunc_normal_(self.position_embeddings, std=0.02)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.convs(x).flatten(2).transpose(1, 2)  # (B, hidden, *grid) -> (B, N, hidden)
        return self.dropout(tokens + self.position_embeddings)
