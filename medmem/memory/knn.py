"""Exact top-k inner-product search: torch matmul for small memories, faiss for large ones.

Both backends return the same neighbours (up to ties). ``auto`` picks faiss when there are many
queries (``FAISS_MIN_QUERIES``, e.g. every token of a batch: faiss was 1.4-1.8x faster from 2k entries
up) or a large memory (``FAISS_MIN_ENTRIES``); for a batch of class-token queries torch's matmul+topk
was faster up to 20k entries and level with faiss at 50k-100k. Measured on the 2-core CPU by
``benchmarks/memory_speed.py`` (``benchmarks/results/memory_speed.md``).
"""

from __future__ import annotations

import torch

FAISS_MIN_ENTRIES = 50_000
FAISS_MIN_QUERIES = 1_024
BACKENDS = ("auto", "torch", "faiss")


def use_faiss(num_queries: int, num_entries: int, backend: str, device_type: str = "cpu") -> bool:
    """The backend decision of :func:`knn_search` (faiss-cpu serves CPU tensors only)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend == "faiss"
    return device_type == "cpu" and (num_queries >= FAISS_MIN_QUERIES or num_entries >= FAISS_MIN_ENTRIES)


def _faiss():
    import faiss  # imported lazily: prototype-mode models must not need it

    return faiss


def knn_search(queries: torch.Tensor, keys: torch.Tensor, k: int, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k keys by inner product for every query.

    Args:
        queries: (Q, D) float.
        keys: (N, D) float.
        k: neighbours wanted; fewer columns come back when N < k.
        backend: ``auto``, ``torch`` or ``faiss``.

    Returns:
        scores (Q, k') and indices (Q, k') into ``keys``, best first, with k' = min(k, N).
    """
    n = keys.shape[0]
    k = min(k, n)
    if k == 0 or queries.shape[0] == 0:
        return queries.new_zeros(queries.shape[0], 0), torch.zeros(queries.shape[0], 0, dtype=torch.long, device=queries.device)
    if use_faiss(queries.shape[0], n, backend, queries.device.type):
        faiss = _faiss()
        q = queries.detach().float().contiguous().numpy()
        x = keys.detach().float().contiguous().numpy()
        scores, idx = faiss.knn(q, x, k, metric=faiss.METRIC_INNER_PRODUCT)
        return torch.from_numpy(scores), torch.from_numpy(idx).long()
    scores = queries.detach().float() @ keys.detach().float().T
    top = scores.topk(k, dim=1)
    return top.values, top.indices
