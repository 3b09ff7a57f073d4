"""Networks: the memory ViT and its memory attention block."""

from medmem.networks.memory_attention import MemorySABlock, MemoryTransformerBlock
from medmem.networks.memory_vit import MemoryViT, param_groups

__all__ = ["MemorySABlock", "MemoryTransformerBlock", "MemoryViT", "param_groups"]
