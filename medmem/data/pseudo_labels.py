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


def pseudo_labelled_manifest(manifest: dict, regime: int | str, indices: list[int], probabilities: np.ndarray, threshold: float) -> dict:
    """The self-training manifest of ``manifest`` at ``regime``.

    ``indices`` (N,): training entries outside the regime that the teacher scored; ``probabilities`` (N, C): its class
    probabilities for them. Entries whose top probability is at least ``threshold`` join the training split with
    ``label`` = the teacher's class, ``pseudo_label`` = True and ``confidence``; their true label is dropped. The result
    has no regimes (train on all of its training split) and says in ``split_policy`` how it was made.
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
    for i, p, c in zip(indices, confidence, predicted):
        if p >= threshold:
            entry = {k: v for k, v in training[i].items() if k != "label"}
            kept.append({**entry, "label": int(c), "pseudo_label": True, "confidence": round(float(p), 4)})
    n_pseudo = len(kept) - len(labelled_idx)
    return {
        **{k: v for k, v in manifest.items() if k not in ("training", "regimes")},
        "name": f"{manifest['name']}_r{key}_pseudo",
        "split_policy": f"{manifest.get('split_policy', '')}; training: regime {key}'s {len(labelled_idx)} labelled images and "
        f"{n_pseudo} of the {len(indices)} unlabelled training images a teacher network labelled with probability "
        f">= {threshold:g} (entries marked pseudo_label; their true labels are not kept)",
        "training": kept,
        "regimes": {},
    }
