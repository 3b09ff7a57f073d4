"""Networks: the memory ViT and its memory attention block."""

from medmem.networks.memory_attention import MemorySABlock, MemoryTransformerBlock
from medmem.networks.memory_vit import MemoryViT, param_groups
from medmem.networks.reference import ResNetClassifier

__all__ = ["MemorySABlock", "MemoryTransformerBlock", "MemoryViT", "ResNetClassifier", "param_groups"]
