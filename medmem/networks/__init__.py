"""Networks: the memory ViT and its memory attention block."""

from medmem.networks.memory_attention import MemorySABlock, MemoryTransformerBlock
from medmem.networks.memory_vit import MemoryViT, param_groups
from medmem.networks.pretraining import ContrastivePretrainer, load_pretrained_trunk, save_pretrained_trunk
from medmem.networks.reference import ResNetClassifier

__all__ = ["ContrastivePretrainer", "load_pretrained_trunk", "save_pretrained_trunk", "MemorySABlock", "MemoryTransformerBlock", "MemoryViT", "ResNetClassifier", "param_groups"]
