"""Self-training manifests: a regime's labelled images plus the unlabelled rest of the training split, labelled by a
trained teacher network where it is confident.

A site that labelled a few percent of its scans usually holds the rest unlabelled. The derived manifest keeps
validation and test as they are (so model selection and the test score stay comparable) and replaces the training
split with the regime's labelled entries followed by the confident unlabelled ones under the teacher's label. The true
labels of those unlabelled entries are not copied, so nothing trained on the derived manifest can read them.
"""

from __future__ import annotations

import numpy as np

from medmem.data.manifest import ManifestError


def unlabelled_indices(manifest: dict, regime: int | str) -> list[int]:
    """Indices into ``manifest["training"]`` outside regime ``regime`` (the images its networks never saw labelled)."""
    key = str(int(float(regime)))
    if key not in manifest.get("regimes", {}):
        raise ManifestError(f"manifest {manifest.get('name')!r} has no regime {regime} (has {sorted(manifest.get('regimes', {}), key=float)})")
    labelled = set(manifest["regimes"][key])
    return [i for i in range(len(manifest["training"])) if i not in labelled]


def class_quota_selection(probabilities: np.ndarray, labelled_labels: list[int], quota: float, threshold: float = 0.0) -> np.ndarray:
    """Which of N scored images join under a quota per class: a boolean mask (N,).

    ``probabilities`` (N, C). Class c takes the ``round(quota * share_c * N)`` images the teacher assigns to c (its top
    class) with the highest probability, at least ``threshold``; ``share_c`` is c's share of ``labelled_labels`` (the
    regime's labelled images: the class mix a site knows without labelling the rest). One threshold instead lets the
    classes the teacher finds easy take most of the places, so the student is fed more of what it already knows.
    """
    if not 0.0 < quota <= 1.0:
        raise ValueError(f"class quota must be within (0, 1], got {quota}")
    n, n_classes = probabilities.shape
    shares = np.bincount(np.asarray(labelled_labels, dtype=np.int64), minlength=n_classes) / max(1, len(labelled_labels))
    confidence, predicted = probabilities.max(axis=1), probabilities.argmax(axis=1)
    keep = np.zeros(n, dtype=bool)
    for c in range(n_classes):
        candidates = np.flatnonzero((predicted == c) & (confidence >= threshold))
        places = int(round(quota * shares[c] * n))
        # stable sort: ties go to the earlier entry, so the selection does not depend on the sort's internals
        keep[candidates[np.argsort(-confidence[candidates], kind="stable")[:places]]] = True
    return keep


def pseudo_labelled_manifest(
    manifest: dict,
    regime: int | str,
    indices: list[int],
    probabilities: np.ndarray,
    threshold: float,
    class_quota: float | None = None,
) -> dict:
    """The self-training manifest of ``manifest`` at ``regime``.

    ``indices`` (N,): training entries outside the regime that the teacher scored; ``probabilities`` (N, C): its class
    probabilities for them. Entries whose top probability is at least ``threshold`` join the training split with
    ``label`` = the teacher's class, ``pseudo_label`` = True and ``confidence``; their true label is dropped. With
    ``class_quota`` only the most confident of them per class join (``class_quota_selection``). The result has no
    regimes (train on all of its training split) and says in ``split_policy`` how it was made.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    n_classes = len(manifest["classes"])
    if probabilities.ndim != 2 or probabilities.shape != (len(indices), n_classes):
        raise ValueError(f"probabilities must be (N, C) = ({len(indices)}, {n_classes}), got {probabilities.shape}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be within [0, 1], got {threshold}")
    key = str(int(float(regime)))
    labelled_idx = set(manifest["regimes"][key])
    if labelled_idx & set(indices):
        raise ValueError(f"indices include labelled images of regime {regime}: a teacher must not pseudo-label those")
    training = manifest["training"]
    kept = [{**training[i], "pseudo_label": False} for i in manifest["regimes"][key]]
    confidence, predicted = probabilities.max(axis=1), probabilities.argmax(axis=1)
    if class_quota is None:
        joins = confidence >= threshold
    else:
        joins = class_quota_selection(probabilities, [training[i]["label"] for i in manifest["regimes"][key]], class_quota, threshold)
    for i, p, c, j in zip(indices, confidence, predicted, joins):
        if j:
            entry = {k: v for k, v in training[i].items() if k != "label"}
            kept.append({**entry, "label": int(c), "pseudo_label": True, "confidence": round(float(p), 4)})
    n_pseudo = len(kept) - len(labelled_idx)
    rule = "" if class_quota is None else f", the most confident up to a quota of {class_quota:g} x each class's labelled share"
    return {
        **{k: v for k, v in manifest.items() if k not in ("training", "regimes")},
        "name": f"{manifest['name']}_r{key}_pseudo",
        "split_policy": f"{manifest.get('split_policy', '')}; training: regime {key}'s {len(labelled_idx)} labelled images and "
        f"{n_pseudo} of the {len(indices)} unlabelled training images a teacher network labelled with probability "
        f">= {threshold:g}{rule} (entries marked pseudo_label; their true labels are not kept)",
        "training": kept,
        "regimes": {},
    }
