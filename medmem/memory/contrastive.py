"""Memory contrastive loss: train the memorising layer's key space so that an image's class-token key
lies near the stored keys of training images of its class.

Why: retrieval quality decides what the memory can add. Trained by cross-entropy alone, the keys of a
small-data ViT retrieve neighbours of the right class only about as often as its head is right (see
docs/design.md), so reading them adds little. The memory already holds an ATMA-smoothed key of every
training image with its label, which is exactly the memory bank of supervised contrastive learning
(Khosla et al. 2020; moving-average bank as in Wu et al. 2018): every stored image of the same class
is a positive, every other one a negative, at no extra forward cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def memory_contrastive_loss(layer: torch.nn.Module, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss of the last training forward's class-token keys against the memory.

    Args:
        layer: a :class:`~medmem.networks.memory_attention.MemorySABlock` after a training forward in
            ``full`` mode (it keeps ``train_cls_keys`` (B, H, Dh) with gradient and ``train_sample_ids``).
        labels: (B,) classes of that batch.
        temperature: softmax temperature over cosine similarities.

    Returns:
        scalar loss, averaged over heads and over the images that have at least one positive in memory
        (0, with gradient, while the memory holds none).
    """
    keys = layer.train_cls_keys
    if keys is None:
        raise RuntimeError("memory contrastive loss: the layer has no training forward to score (call the model in train mode first)")
    memory = layer.memory
    n = memory.num_written
    if n == 0:
        return keys.sum() * 0.0
    bank = memory.token_keys(0).float()  # (H, n, Dh): class-token key of each row
    bank_labels = memory.row_labels[:n]
    q = F.normalize(keys.float(), dim=-1)  # (B, H, Dh)
    logits = torch.einsum("bhd,hnd->bhn", q, bank) / temperature  # (B, H, n)
    labels = labels.reshape(-1).long().to(bank_labels.device)
    valid = torch.ones(q.shape[0], n, dtype=torch.bool, device=q.device)
    ids = layer.train_sample_ids
    if ids is not None:  # an image's own stored key is not a positive (it is itself)
        own = torch.tensor([memory.id_to_row.get(int(s), -1) for s in ids.reshape(-1).tolist()], device=q.device)
        has_own = own >= 0
        valid[torch.arange(q.shape[0], device=q.device)[has_own], own[has_own]] = False
    positive = (bank_labels[None, :] == labels[:, None]) & valid & (bank_labels[None, :] >= 0)  # (B, n)
    log_prob = torch.log_softmax(logits.masked_fill(~valid[:, None, :], float("-inf")), dim=-1)
    pos_count = positive.sum(dim=1)  # (B,)
    per_image = -(log_prob.masked_fill(~positive[:, None, :], 0.0).sum(dim=-1)) / pos_count.clamp(min=1)[:, None]  # (B, H)
    has_pos = pos_count > 0
    if not bool(has_pos.any()):
        return keys.sum() * 0.0
    return per_image[has_pos].mean()
