"""Label the unlabelled rest of a training split with a trained network (bundle ``pseudo_label.json``).

The teacher scores every training image outside the regime it was trained on, optionally averaged over the 8 flips
and turns (``medmem.engine.dihedral``), and the confident ones (above one threshold, or the most confident per class
under a quota) are written with its label into a self-training manifest (``medmem.data.pseudo_labels``). Train the
student on that manifest (``--dataset <manifest> --regime 100``). The true labels of the unlabelled images are never
read here. The teacher's scores are kept (``.npz``) so that another selection from the same teacher needs no rescoring.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from monai.data import DataLoader, Dataset

from medmem.atomic import atomic_path, write_json_atomic
from medmem.data.datalist import load_datalist
from medmem.data.manifest import load_manifest, sha256_file
from medmem.data.pseudo_labels import pseudo_labelled_manifest, unlabelled_indices
from medmem.engine.consistency import warn_if_above_smoothed_top
from medmem.engine.dihedral import dihedral_probabilities


def teacher_probabilities(
    network: torch.nn.Module,
    items: list[dict],
    preprocessing: Callable,
    dihedral: bool = True,
    batch_size: int = 128,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Class probabilities (N, C) of ``network`` (eval mode, no gradient) for datalist ``items``, in their order."""
    loader = DataLoader(Dataset(items, transform=preprocessing), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    network.eval()
    out = []
    with torch.no_grad():
        for batch in loader:
            x = batch["image"].to(device)
            out.append((dihedral_probabilities(network, x) if dihedral else network(x).softmax(-1)).cpu())
    return torch.cat(out).numpy()


def teacher_scores(
    network: torch.nn.Module,
    checkpoint: str | os.PathLike,
    items: list[dict],
    indices: list[int],
    preprocessing: Callable,
    scores: str | os.PathLike,
    dihedral: bool = True,
    image_hashes: list[str] | None = None,
    **loader: Any,
) -> np.ndarray:
    """The teacher's class probabilities (N, C) for ``items[i]`` for i in ``indices``, read from ``scores`` when that
    file holds this teacher's scores of these images, else computed (``teacher_probabilities``) and saved there.

    ``network`` must already hold ``checkpoint``'s weights. The file keys the scores by the checkpoint's sha256, the
    dihedral flag, the scored training indices and, given ``image_hashes`` (the manifest's content hashes of the scored
    images, in order), their contents; a file made otherwise is refused by name, not silently reused.
    """
    identity = {"teacher_sha256": sha256_file(checkpoint), "dihedral": bool(dihedral), "indices": np.asarray(indices, dtype=np.int64)}
    if image_hashes is not None:
        identity["images_sha256"] = hashlib.sha256("\n".join(image_hashes).encode()).hexdigest()
    if Path(scores).exists():
        with np.load(scores) as saved:
            differs = [k for k, v in identity.items() if k not in saved or not np.array_equal(saved[k], v)]
            if differs:
                raise ValueError(f"{scores}: teacher scores of another {' and '.join(differs)}; remove the file or name another one")
            return saved["probabilities"]
    probs = teacher_probabilities(network, [items[i] for i in indices], preprocessing, dihedral, **loader)
    with atomic_path(scores, suffix=".npz") as tmp:
        np.savez(tmp, probabilities=probs, **identity)
    return probs


def write_pseudo_labelled_manifest(
    network: torch.nn.Module,
    checkpoint: str | os.PathLike,
    manifest: str | os.PathLike,
    regime: int | str,
    preprocessing: Callable,
    out: str | os.PathLike,
    threshold: float = 0.85,
    dihedral: bool = True,
    data_root: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 128,
    num_workers: int = 0,
    class_names: list[str] | None = None,
    class_quota: float | None = None,
    scores: str | os.PathLike | None = None,
    label_smoothing: float = 0.0,
) -> dict[str, Any]:
    """Load ``checkpoint`` into ``network``, score the training images of ``manifest`` outside ``regime`` and write
    the self-training manifest to ``out`` (temporary name, then renamed), with a summary beside it
    (``<out stem>.summary.json``: how many joined, per class). ``class_quota``: select per class
    (``medmem.data.pseudo_labels.class_quota_selection``) instead of by ``threshold`` alone. ``scores``: where the
    teacher's scores are kept and, if already there for this teacher, read (default ``<out stem>.scores.npz``).
    ``label_smoothing``: what the teacher trained with; a ``threshold`` above the top probability it trains towards
    (``1 - e + e / C``) warns. The summary gives the teacher's highest and median top probability, to set the threshold
    by. Returns the summary."""
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    network.load_state_dict(state["model"] if "model" in state else state)  # a training checkpoint or model_full.pt
    network.to(device)
    source = load_manifest(manifest)
    indices = unlabelled_indices(source, regime)
    items = load_datalist(source, "training", data_root)
    scores = Path(scores) if scores else Path(out).with_suffix(".scores.npz")
    probs = teacher_scores(network, checkpoint, items, indices, preprocessing, scores, dihedral, [source["training"][i]["sha256"] for i in indices],
                           batch_size=batch_size, num_workers=num_workers, device=device)  # fmt: skip
    derived = pseudo_labelled_manifest(source, regime, indices, probs, threshold, class_quota)
    names = class_names or source["classes"]
    warn_if_above_smoothed_top("pseudo_threshold", threshold, label_smoothing, len(names), "few unlabelled images will join")
    joined = Counter(e["label"] for e in derived["training"] if e["pseudo_label"])
    top = probs.max(1)
    summary = {
        "teacher": str(checkpoint),
        "source_manifest": str(manifest),
        "regime": str(regime),
        "threshold": threshold,
        "class_quota": class_quota,
        "dihedral": dihedral,
        "teacher_scores": str(scores),
        "labelled": len(derived["training"]) - sum(joined.values()),
        "unlabelled": len(indices),
        "pseudo_labelled": sum(joined.values()),
        "pseudo_labelled_per_class": {names[c]: joined.get(c, 0) for c in range(len(names))},
        "teacher_top_probability": {"max": float(top.max()), "median": float(np.median(top))} if len(top) else None,
    }
    write_json_atomic(derived, out)
    write_json_atomic(summary, Path(out).with_suffix(".summary.json"))
    return summary
