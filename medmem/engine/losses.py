"""Training loss of the bundle: cross-entropy plus, optionally, the memory contrastive loss."""

from __future__ import annotations

import torch
from torch import nn

from medmem.engine.handlers import unwrap
from medmem.memory.contrastive import memory_contrastive_loss


class MemoryAwareLoss(nn.Module):
    """``CE(logits, y) + contrast_weight * mean over memorising layers of the memory contrastive loss``.

    Called by MONAI's ``SupervisedTrainer`` right after the network's forward, so the layers still hold
    that forward's class-token keys. With ``contrast_weight`` 0 (or a network without memory in ``full``
    mode) it is exactly ``CrossEntropyLoss``, so plain-ViT baselines train as before.
    """

    def __init__(self, network: nn.Module, contrast_weight: float = 0.0, temperature: float = 0.1, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.network = [network]  # a list: not registered as a submodule (its weights are not the loss's)
        self.contrast_weight, self.temperature = contrast_weight, temperature
        self.cross_entropy = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (B, C), target (B,) or (B, 1) class indices."""
        target = target.reshape(-1).long()
        loss = self.cross_entropy(logits, target)
        if self.contrast_weight <= 0:
            return loss
        model = unwrap(self.network[0])
        layers = [layer for layer in getattr(model, "memory_layers", list)() if layer.mode == "full" and layer.train_cls_keys is not None]
        if layers and model.training:
            contrast = torch.stack([memory_contrastive_loss(layer, target, self.temperature) for layer in layers]).mean()
            loss = loss + self.contrast_weight * contrast
        return loss
