"""Exact top-k inner-product search: torch matmul for small memories, faiss for large ones.

Both backends return the same neighbours (up to ties); ``auto`` switches at
``FAISS_MIN_ENTRIES`` entries, the point measured by ``benchmarks/knn_backends.py`` on this machine
(see ``benchmarks/results/knn_backends.md``).
"""

from __future__ import annotations

import torch

FAISS_MIN_ENTRIES = 20_000
BACKENDS = ("auto", "torch", "faiss")


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
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    n = keys.shape[0]
    k = min(k, n)
    if k == 0 or queries.shape[0] == 0:
        return queries.new_zeros(queries.shape[0], 0), torch.zeros(queries.shape[0], 0, dtype=torch.long, device=queries.device)
    use_faiss = backend == "faiss" or (backend == "auto" and n >= FAISS_MIN_ENTRIES and queries.device.type == "cpu")
    if use_faiss:
        faiss = _faiss()
        q = queries.detach().float().contiguous().numpy()
        x = keys.detach().float().contiguous().numpy()
        scores, idx = faiss.knn(q, x, k, metric=faiss.METRIC_INNER_PRODUCT)
        return torch.from_numpy(scores), torch.from_numpy(idx).long()
    scores = queries.detach().float() @ keys.detach().float().T
    top = scores.topk(k, dim=1)
    return top.values, top.indices
