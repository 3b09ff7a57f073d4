"""A CNN reference for the regime study: MONAI's ResNet-18 behind MemoryViT's call signature."""

from typing import Optional

import torch
from monai.networks.nets import resnet18
from torch import nn


class ResNetClassifier(nn.Module):
    """MONAI ``resnet18`` returning logits (B, num_classes).

    Takes MemoryViT's constructor keywords (ViT-only ones are ignored) so a bundle can swap it in with
    one override (``--network_def#_target_ medmem.networks.ResNetClassifier``). The stem uses the usual
    stride-2 first convolution: MONAI's default keeps full resolution there, which is several times
    slower at these image sizes.
    """

    def __init__(self, in_channels: int, num_classes: int, spatial_dims: int = 2, **vit_only_settings: object) -> None:
        super().__init__()
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "spatial_dims": spatial_dims, "memory_mode": "off"}
        self.net = resnet18(spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=num_classes, conv1_t_stride=2)

    def forward(self, x: torch.Tensor, sample_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.net(x)

    def set_memory_mode(self, mode: str) -> None:
        """No memory: accepted so evaluation configs can treat every network alike."""
