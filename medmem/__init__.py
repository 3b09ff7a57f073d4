"""medmem: a memorizing vision transformer (MoViT-style) for data-efficient medical image classification."""

__version__ = "0.1.0"

from medmem import data, engine, memory, networks  # noqa: E402  (bundle configs use medmem.<sub>.<name>)

__all__ = ["data", "engine", "memory", "networks"]
