"""Training loss of the bundle: cross-entropy plus, optionally, the memory vote's own cross-entropy
and the memory contrastive loss."""

from __future__ import annotations

import torch
from torch import nn

from medmem.engine.handlers import unwrap
from medmem.memory.contrastive import memory_contrastive_loss


class MemoryAwareLoss(nn.Module):
    """``CE(logits, y) + vote_weight * CE(vote, y) + contrast_weight * mean over memorising layers of the
    memory contrastive loss``.

    The vote term applies when the network trains its memory vote separately
    (``MemoryViT(memory_vote_training="separate")`` leaves the vote (B, C) in ``train_vote``).

    Called by MONAI's ``SupervisedTrainer`` right after the network's forward, so the layers still hold
    that forward's class-token keys. With ``contrast_weight`` 0 (or a network without memory in ``full``
    mode) it is exactly ``CrossEntropyLoss``, so plain-ViT baselines train as before.
    """

    def __init__(
        self, network: nn.Module, contrast_weight: float = 0.0, temperature: float = 0.1, label_smoothing: float = 0.0, vote_weight: float = 1.0
    ) -> None:
        super().__init__()
        self.network = [network]  # a list: not registered as a submodule (its weights are not the loss's)
        self.contrast_weight, self.temperature, self.vote_weight = contrast_weight, temperature, vote_weight
        self.cross_entropy = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (B, C), target (B,) or (B, 1) class indices, or (B, C) float class probabilities (mixup's
        :class:`medmem.engine.batch.MixUpBatch`; cross-entropy only, as the memory terms need each image's one class)."""
        soft = target.is_floating_point() and target.dim() == 2 and target.shape == logits.shape
        target = target if soft else target.reshape(-1).long()
        loss = self.cross_entropy(logits, target)
        model = unwrap(self.network[0])
        vote = getattr(model, "train_vote", None)
        if soft and model.training and ((vote is not None and self.vote_weight > 0) or self.contrast_weight > 0):
            raise ValueError("the memory vote and contrastive losses need class indices, not mixed (soft) targets: train a "
                             "memory network without mixup")
        if vote is not None and model.training and self.vote_weight > 0:
            # log of a distribution: CrossEntropyLoss's log-softmax leaves it unchanged
            loss = loss + self.vote_weight * self.cross_entropy(torch.log(vote.clamp(min=1e-8)), target)
        if self.contrast_weight <= 0:
            return loss
        layers = [layer for layer in getattr(model, "memory_layers", list)() if layer.mode == "full" and layer.train_cls_keys is not None]
        if layers and model.training:
            contrast = torch.stack([memory_contrastive_loss(layer, target, self.temperature) for layer in layers]).mean()
            loss = loss + self.contrast_weight * contrast
        return loss
