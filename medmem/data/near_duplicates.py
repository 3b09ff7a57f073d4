"""Near-duplicate groups: images that are the same picture re-saved or one slice away from each other.

Why: a content hash catches byte-identical copies only. The brain_tumor_mri Training folder also holds
re-saved copies (differing by under one grey level on average) and neighbouring slices of one scan
(consecutive file numbers, about three grey levels apart), with no patient identifier to group them.
A split that puts one of them in training and the other in test measures recall, not learning. Each
image is reduced to a small grey thumbnail; thumbnails closer than a threshold in mean absolute
difference are linked, and the connected components become the manifest's groups, which
:func:`medmem.data.manifest.split_by_group` keeps inside one split.
"""

from __future__ import annotations

from pathlib import Path

import torch

from medmem.data.manifest import Candidate

# mean absolute difference of 64 px grey thumbnails scaled to [0, 1]; 0.02 is about 5 grey levels of
# 255: measured on brain_tumor_mri/Training it links re-saved copies and adjacent slices while the
# largest group stays a handful of images (a looser 0.03 starts chaining distinct scans together):
# benchmarks/results/near_duplicate_threshold.md
DEFAULT_THRESHOLD = 0.02
THUMBNAIL_SIZE = 64


def thumbnails(data_root: Path, candidates: list[Candidate], size: int = THUMBNAIL_SIZE) -> torch.Tensor:
    """Grey thumbnails of the candidates through the evaluation chain (any format the readers take).

    Returns:
        (N, size * size) float tensor in [0, 1].
    """
    from medmem.data.transforms import eval_transforms

    chain = eval_transforms(size, 1)
    rows = [chain({"image": str(data_root / c.image)})["image"].reshape(-1).float() for c in candidates]
    return torch.stack(rows) if rows else torch.zeros(0, size * size)


def linked_components(thumbs: torch.Tensor, threshold: float, block: int = 512) -> list[int]:
    """Connected components of the graph linking rows closer than ``threshold`` (mean absolute difference).

    Args:
        thumbs: (N, D) thumbnails.
    Returns:
        N component ids; equal ids mean one group. Pairwise distances are computed a block of rows
        at a time, so memory stays O(block * N) plus the links found.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = thumbs.shape[0]
    dim = max(1, thumbs.shape[1])
    rows, cols = [], []
    for start in range(0, n, block):
        dist = torch.cdist(thumbs[start : start + block], thumbs, p=1) / dim  # (b, N)
        r, c = torch.nonzero(dist < threshold, as_tuple=True)
        rows.append(r + start)
        cols.append(c)
    r = torch.cat(rows).numpy() if rows else []
    c = torch.cat(cols).numpy() if cols else []
    graph = coo_matrix(([True] * len(r), (r, c)), shape=(n, n))
    return connected_components(graph, directed=False)[1].tolist()


def group_near_duplicates(
    data_root: Path, candidates: list[Candidate], threshold: float = DEFAULT_THRESHOLD, size: int = THUMBNAIL_SIZE
) -> int:
    """Give every near-duplicate group of ``candidates`` one ``group`` id (in place).

    Images alone keep their group (``None``: the split then uses their content hash). A group id is
    ``near:<sha256 of the group's first member by path>``, so it does not depend on file order.

    Returns:
        how many images ended up in a group of two or more.
    """
    ids = linked_components(thumbnails(data_root, candidates, size), threshold)
    members: dict[int, list[Candidate]] = {}
    for cand, comp in zip(candidates, ids):
        members.setdefault(comp, []).append(cand)
    grouped = 0
    for group in members.values():
        if len(group) < 2:
            continue
        name = "near:" + min(group, key=lambda c: c.image).sha256[:16]
        for cand in group:
            cand.group = name
        grouped += len(group)
    return grouped
