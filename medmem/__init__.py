"""medmem: a memorizing vision transformer (MoViT-style) for data-efficient medical image classification."""

__version__ = "0.1.0"

from medmem import data, engine, memory, networks  # noqa: E402  (bundle configs use medmem.<sub>.<name>)
from medmem.flags import as_flag  # noqa: E402  (bundle configs read yes/no settings through it)

__all__ = ["as_flag", "data", "engine", "memory", "networks"]
