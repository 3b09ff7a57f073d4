"""Prototypical attention learning: distil the full memory into P prototypes per head.

1. Initialise: spherical k-means (faiss) on each head's memory keys; a prototype's value is the mean
   value of its cluster, and its ``members`` are the training samples that contribute most entries.
2. Learn: with the backbone frozen, fit prototype keys and values so that each memorising layer's
   output with prototypes matches its output with the full kNN memory on training images (MSE,
   normalised by the target's energy), plus a small classification loss on the logits.
3. Deploy: the model switches to ``prototypes`` mode and its full memory is emptied, so the checkpoint
   carries only plain tensors (no kNN index) and scripts with TorchScript.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F

from medmem.memory.store import ExternalMemory

logger = logging.getLogger(__name__)


@dataclass
class SummaryReport:
    num_prototypes: int
    memory_samples: int
    memory_entries: int
    steps: int
    first_loss: float
    last_loss: float
    output_rel_error: float  # ||out_proto - out_full|| / ||out_full|| over the last epoch


@torch.no_grad()
def kmeans_prototypes(
    memory: ExternalMemory,
    num_prototypes: int,
    seed: int = 0,
    members: int = 8,
    value_offsets: torch.Tensor | None = None,
    token: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k-means initial prototypes of one memory (its entries themselves where they fit in ``num_prototypes``).

    ``value_offsets`` (H, N, Dh), if given, is added to the entries' values before averaging (e.g. the
    label embeddings of a label-aware layer). ``token``: cluster only that token position's entries
    (one per stored image; a layer whose class token reads only class tokens is summarised by them).

    Returns:
        keys (H, P, Dh) L2-normalised, values (H, P, Dh), and member sample ids (H, P, members), -1 padded.
    """
    import faiss

    if memory.num_entries == 0:
        raise ValueError("cannot summarise an empty memory: train (or write) it first")
    h, dh, tokens = memory.num_heads, memory.head_dim, memory.tokens
    entries = torch.arange(memory.num_entries)
    if token is not None:
        entries = entries[token::tokens]
    n = len(entries)
    p = min(num_prototypes, n)
    keys = torch.zeros(h, num_prototypes, dh)
    values = torch.zeros(h, num_prototypes, dh)
    member_ids = torch.full((h, num_prototypes, members), -1, dtype=torch.long)
    row_ids = memory.row_ids[: memory.num_written]
    for head in range(h):
        x = memory.keys[head, entries].float().contiguous()
        if n <= num_prototypes:  # the memory fits: each entry is its own prototype (exact; nothing to cluster)
            centroids, assign_t = x, torch.arange(n)
        else:
            km = faiss.Kmeans(dh, p, niter=20, seed=seed + head, spherical=True, verbose=False, min_points_per_centroid=1)
            km.train(x.numpy())
            _, assign = km.index.search(x.numpy(), 1)
            centroids, assign_t = torch.from_numpy(km.centroids).float(), torch.from_numpy(assign[:, 0]).long()
        counts = torch.bincount(assign_t, minlength=p).clamp(min=1).float()
        entry_values = memory.values[head, entries].float()
        if value_offsets is not None:
            entry_values = entry_values + value_offsets[head, entries]
        vals = torch.zeros(p, dh).index_add_(0, assign_t, entry_values) / counts[:, None]
        keys[head, :p] = F.normalize(centroids, dim=-1)
        values[head, :p] = vals
        member_ids[head] = top_members(row_ids[entries // tokens], assign_t, num_prototypes, members)
    return keys, values, member_ids


def top_members(owners: torch.Tensor, assign: torch.Tensor, num_prototypes: int, members: int = 8) -> torch.Tensor:
    """Member samples (P, members) of each prototype, -1 padded: the samples owning most of the entries
    assigned to it. ``owners`` and ``assign``: sample id and prototype index of each entry (N,)."""
    out = torch.full((num_prototypes, members), -1, dtype=torch.long)
    for proto in assign.unique().tolist():
        ids, freq = torch.unique(owners[assign == proto], return_counts=True)
        top = ids[freq.argsort(descending=True)[:members]]
        out[proto, : len(top)] = top
    return out


def label_value_offsets(layer: torch.nn.Module) -> torch.Tensor | None:
    """Label embeddings (H, N, Dh) of every entry of a label-aware memorising layer, else None."""
    if not layer.label_aware:
        return None
    entries = torch.arange(layer.memory.num_entries).view(1, 1, 1, -1)
    return layer.label_values(layer.memory.labels_at(entries).expand(1, layer.num_heads, 1, -1))[0, :, 0].detach()


@torch.no_grad()
def prototype_label_distribution(memory: ExternalMemory, proto_keys: torch.Tensor, num_classes: int, token: int | None = None) -> torch.Tensor:
    """Class distribution (H, P, C) of the labelled entries nearest each prototype key (H, P, Dh);
    zeros for a prototype without labelled entries. ``token`` as in :func:`kmeans_prototypes`."""
    h, p = proto_keys.shape[:2]
    dist = torch.zeros(h, p, num_classes)
    entries = torch.arange(memory.num_entries)
    if token is not None:
        entries = entries[token :: memory.tokens]
    labels = memory.labels_at(entries)
    known = labels >= 0
    if not bool(known.any()):
        return dist
    entries, labels = entries[known], labels[known]
    valid = proto_keys.abs().sum(dim=-1) > 0  # (H, P)
    for head in range(h):
        sims = memory.keys[head, entries].float() @ F.normalize(proto_keys[head].float(), dim=-1).T
        assign = sims.masked_fill(~valid[head][None, :], float("-inf")).argmax(dim=1)
        dist[head].index_put_((assign, labels), torch.ones(len(entries)), accumulate=True)
    return dist / dist.sum(dim=-1, keepdim=True).clamp(min=1)


def set_prototype_labels(layer: torch.nn.Module) -> None:
    """Fill a memorising layer's ``proto_labels`` from its full memory and current prototype keys."""
    token = 0 if layer.same_token else None
    layer.proto_labels = prototype_label_distribution(layer.memory, layer.proto_keys, layer.num_classes, token).to(layer.proto_keys.device)


def memory_fits(layer: torch.nn.Module, num_prototypes: int) -> bool:
    """Whether a memorising layer's (read) entries fit in ``num_prototypes`` per head, so that the
    prototypes can be the entries themselves."""
    entries = layer.memory.num_written if layer.same_token else layer.memory.num_entries
    return entries <= num_prototypes


def summarize_memory(
    model: torch.nn.Module,
    batches: Iterable[dict],
    num_prototypes: int | None = None,
    epochs: int = 3,
    lr: float = 1e-2,
    ce_weight: float = 0.1,
    seed: int = 0,
    device: torch.device | str = "cpu",
    init: str = "kmeans",
) -> SummaryReport:
    """Distil every memorising layer of ``model`` (a :class:`~medmem.networks.MemoryViT` in ``full``
    mode with a written memory) into prototypes, in place; returns what happened.

    ``batches`` yields dicts with ``image`` (B, C, ...), ``label`` (B,) and ``sample_id`` (B,), e.g. a
    DataLoader over the training split with evaluation transforms. It is iterated ``epochs`` times.
    ``init="current"`` starts from the layers' present prototypes (e.g. k-means ones already made and
    scored) instead of running k-means again.
    """
    if init not in ("kmeans", "current"):
        raise ValueError(f"init must be 'kmeans' or 'current', got {init!r}")
    layers = model.memory_layers()
    if not layers:
        raise ValueError("model has no memorising layer")
    torch.manual_seed(seed)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    p_count = num_prototypes or layers[0].proto_keys.shape[1]
    mem_samples, mem_entries = layers[0].memory.num_written, layers[0].memory.num_entries
    for layer in layers:
        if init == "current":
            if layer.proto_keys.shape[1] != p_count:
                raise ValueError(f"init='current' needs {p_count} prototypes per head; the layer has {layer.proto_keys.shape[1]}")
            continue
        keys, values, members = kmeans_prototypes(layer.memory, p_count, seed, value_offsets=label_value_offsets(layer), token=0 if layer.same_token else None)
        layer.proto_keys = keys.to(device)
        layer.proto_values = values.to(device)
        layer.proto_members = members.to(device)
    if all(memory_fits(layer, p_count) for layer in layers):
        # the prototypes are the memory itself: nothing to distil. (Distilling would even harm: its targets
        # exclude each training image's own entry, which the prototypes cannot.)
        logger.info("the memory (%d samples) fits in %d prototypes: prototypes are its entries, no distillation", mem_samples, p_count)
        epochs = 0
    params = [t for layer in layers for t in (layer.proto_keys, layer.proto_values)]
    for t in params:
        t.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)

    captured: dict[int, torch.Tensor] = {}
    hooks = [layer.register_forward_hook(lambda mod, inp, out, i=i: captured.__setitem__(i, out)) for i, layer in enumerate(layers)]
    steps, first_loss, last_loss = 0, float("nan"), float("nan")
    err_num = err_den = 0.0
    try:
        for epoch in range(epochs):
            err_num = err_den = 0.0
            for batch in batches:
                x = torch.as_tensor(batch["image"]).float().to(device)
                y = torch.as_tensor(batch["label"]).long().to(device)
                ids = torch.as_tensor(batch["sample_id"]).long().to(device)
                model.set_memory_mode("full")
                with torch.no_grad():
                    model(x, ids)
                    targets = {i: t.detach() for i, t in captured.items()}
                model.set_memory_mode("prototypes")
                logits = model(x)
                match = sum(F.mse_loss(captured[i], targets[i]) / targets[i].pow(2).mean().clamp(min=1e-8) for i in targets)
                loss = match + ce_weight * F.cross_entropy(logits, y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    for layer in layers:
                        layer.proto_keys.copy_(F.normalize(layer.proto_keys, dim=-1))
                    err_num += sum(float((captured[i] - targets[i]).pow(2).sum()) for i in targets)
                    err_den += sum(float(targets[i].pow(2).sum()) for i in targets)
                if steps == 0:
                    first_loss = float(loss.detach())
                last_loss = float(loss.detach())
                steps += 1
            logger.info("summarise epoch %d: loss %.4f, relative output error %.4f", epoch + 1, last_loss, (err_num / max(err_den, 1e-12)) ** 0.5)
    finally:
        for hook in hooks:
            hook.remove()
        for t in params:
            t.requires_grad_(False)
    for layer in layers:
        layer.proto_keys = layer.proto_keys.detach()
        layer.proto_values = layer.proto_values.detach()
        set_prototype_labels(layer)
    model.set_memory_mode("prototypes")
    return SummaryReport(p_count, mem_samples, mem_entries, steps, first_loss, last_loss, (err_num / max(err_den, 1e-12)) ** 0.5)


def drop_full_memory(model: torch.nn.Module) -> None:
    """Empty every memorising layer's full memory (the deployable model carries prototypes only)."""
    for layer in model.memory_layers():
        layer.memory.clear()
        layer.memory._shrink_to_fit()
