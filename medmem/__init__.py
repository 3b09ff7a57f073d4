"""medmem: a memorizing vision transformer (MoViT-style) for data-efficient medical image classification."""

__version__ = "0.1.0"
