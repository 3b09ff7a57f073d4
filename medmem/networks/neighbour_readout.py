"""A classifier readout that reads the labelled training images nearest the query (retrieval head).

Why it exists: the memory read inside the top attention block turned out inert at test time (docs/design.md,
session 12): what it adds is a few percent of the residual stream, and only the fused label vote moved
predictions. Here the neighbours enter where the decision is made. The image's class-token features ``f``
(B, D) retrieve the ``k`` most similar training images from a bank of their class-token features, and

    readout = f + sum_i softmax_i(-||W_K f - W_K f_i||^2) * (E[y_i] + T(W_K f - W_K f_i))

goes to the linear classifier: each neighbour brings a learned embedding of its label ``E[y_i]``, corrected by
how it differs from the query (``T``: a small MLP of the key difference). The form follows TabR (Gorishniy et al.,
"TabR: Tabular deep learning meets nearest neighbors", ICLR 2024); the bank is written as the attention memory
is (ATMA moving average per training image, the image's own entry excluded while training).
"""

from typing import Optional

import torch
from torch import nn

from medmem.memory.store import ExternalMemory, forward_rows

READOUTS = ("linear", "neighbours")


class NeighbourReadout(nn.Module):
    """Adds what the ``k`` nearest training images say to a batch of class-token features.

    Args:
        hidden_size: feature size D.
        num_classes: classes C (label embedding rows; one more row for an unknown label).
        k: neighbours read per image.
        momentum: ATMA momentum of the feature bank (0 = overwrite).
        dropout_rate: dropout inside ``T``.
        mode: ``full`` (read the bank) or ``off`` (return the features unchanged).
        use_labels: neighbours bring their label embedding (``False``: only ``T`` of the key difference; an ablation
            that tells the labels' part from that of the extra layers).
    """

    pending: Optional[torch.Tensor]
    pending_ids: Optional[torch.Tensor]

    def __init__(self, hidden_size: int, num_classes: int, k: int = 32, momentum: float = 0.9, dropout_rate: float = 0.0, mode: str = "full", use_labels: bool = True) -> None:
        super().__init__()
        self.k, self.use_labels = k, use_labels
        self.mode = mode
        # one "head", one token per image: a row is one training image's class-token features
        self.memory = ExternalMemory(1, hidden_size, 1, momentum)
        self.key_projection = nn.Linear(hidden_size, hidden_size, bias=False)  # a bias would cancel in every key difference
        # row 0: unknown label (an image written without one); starts at zero so it carries nothing
        self.label_embedding = nn.Embedding(num_classes + 1, hidden_size)
        with torch.no_grad():
            self.label_embedding.weight[0].zero_()
        self.difference = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Dropout(dropout_rate), nn.Linear(hidden_size, hidden_size, bias=False)
        )
        self.pending = None  # the last training forward's features (B, D), written by commit_memory
        self.pending_ids = None  # ... and the sample ids (B,) that forward was given

    def set_mode(self, mode: str) -> None:
        if mode == "prototypes":
            raise ValueError("the neighbour readout has no prototype mode: evaluate it with memory mode 'full' or 'off'")
        self.mode = mode

    def bank(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features (N, D), labels (N,) (-1 unknown) and sample ids (N,) of the written training images."""
        n = self.memory.num_written
        return self.memory.values[0, :n].float(), self.memory.row_labels[:n], self.memory.row_ids[:n]

    def forward(self, features: torch.Tensor, sample_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, D) class-token features -> (B, D) features plus the neighbours' readout.

        ``sample_ids`` (B,) (training only): each image's own bank entry is never read.
        """
        if self.training:
            self.pending, self.pending_ids = features.detach(), sample_ids
        if self.mode == "off" or self.memory.num_written == 0:
            return features
        return features + self.read(features, sample_ids)[2]

    def read(self, features: torch.Tensor, sample_ids: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What the bank says about (B, D) features: attention weights (B, k) over the neighbours, their bank
        rows (B, k) (``bank()`` order; weight 0 where unreadable) and the sum added to the features (B, D)."""
        bank, labels, ids = self.bank()
        query = self.key_projection(features)  # (B, D)
        keys = self.key_projection(bank)  # (N, D)
        scores = -torch.cdist(query, keys).square()  # (B, N)
        readable = torch.ones_like(scores, dtype=torch.bool)
        if sample_ids is not None:
            readable = torch.as_tensor(sample_ids, device=ids.device).long().view(-1, 1) != ids.view(1, -1)
        k = min(self.k, bank.shape[0])
        top, index = scores.masked_fill(~readable, -1e30).topk(k, dim=-1)  # (B, k)
        # weights over the readable neighbours only (a bank holding just the image itself reads nothing)
        weights = torch.softmax(top, dim=-1) * readable.gather(1, index)
        values = self.difference(query.unsqueeze(1) - keys[index])  # (B, k, D)
        if self.use_labels:
            values = values + self.label_embedding(labels[index] + 1)
        return weights, index, torch.einsum("bk,bkd->bd", weights, values)

    @torch.no_grad()
    def commit_memory(self, sample_ids: torch.Tensor, labels: Optional[torch.Tensor] = None) -> None:
        """Write the last training forward's features for these (B,) sample ids (and labels)."""
        if self.pending is None:
            return
        feats = self.pending.view(self.pending.shape[0], 1, 1, -1)
        sample_ids, labels = forward_rows(self.pending_ids, sample_ids, labels, feats.shape[0])
        self.memory.write(feats, feats, sample_ids, labels)
        self.pending = self.pending_ids = None
