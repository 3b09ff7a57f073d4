"""From a manifest to the lists of dicts that MONAI datasets take."""

from __future__ import annotations

import os
from pathlib import Path

from medmem.data.manifest import SPLITS, load_manifest
from medmem.paths import resolve_data_root

NOT_IN_MEMORY = -1  # sample_id of entries that are never written to the memory (validation, test)


def load_datalist(
    manifest: str | os.PathLike | dict,
    split: str,
    data_root: str | os.PathLike | None = None,
    regime: int | str | None = None,
    source_groups: bool = False,
) -> list[dict]:
    """Entries of ``split`` with absolute image paths, ready for ``monai.data.Dataset``.

    Each entry: ``{"image": abs path or npz ref, "label": int, "sample_id": int, "case_id": str}``, plus
    ``"pseudo_label": bool`` from a self-training manifest (:mod:`medmem.data.pseudo_labels`), whose entries say whether
    a teacher network, not a person, gave the label; it follows the case into memory tables and prediction evidence.
    ``sample_id`` is the entry's index in the *full* training list, so the memory addresses a training
    case the same way in every regime; validation and test entries get ``-1``.
    ``regime`` (1, 3, 10, 30, 100 percent) selects the nested subset of training.
    ``source_groups`` adds ``"source_group": int`` (:func:`source_group_ids`), for a self-supervised loss that
    must not treat two copies of one source as different images.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    m = manifest if isinstance(manifest, dict) else load_manifest(manifest)
    root = resolve_data_root(data_root)
    entries = m[split]
    indices = range(len(entries))
    groups = source_group_ids(entries) if source_groups else None
    if regime is not None and str(regime) not in ("100", "None"):
        if split != "training":
            raise ValueError("regimes subset the training split only")
        key = str(int(float(regime)))
        if key not in m["regimes"]:
            raise ValueError(f"regime {regime} not in manifest (has {sorted(m['regimes'], key=float)})")
        indices = m["regimes"][key]
    out = []
    for i in indices:
        e = entries[i]
        out.append(
            {
                "image": str(Path(root) / e["image"]),
                "label": int(e["label"]),
                "sample_id": int(i) if split == "training" else NOT_IN_MEMORY,
                "case_id": e["image"],
                **({"pseudo_label": bool(e["pseudo_label"])} if "pseudo_label" in e else {}),
                **({} if groups is None else {"source_group": groups[i]}),
            }
        )
    return out


def source_group_ids(entries: list[dict]) -> list[int]:
    """One int per manifest entry: entries that share a ``group`` (the manifest's augmented copies, re-saves or
    adjacent slices of one source, e.g. LC25000's tiles) share an id; an entry without a group is its own source."""
    ids: dict[str, int] = {}
    return [ids.setdefault(f"group:{e['group']}" if e.get("group") is not None else f"entry:{i}", len(ids)) for i, e in enumerate(entries)]


def class_names(manifest: str | os.PathLike | dict) -> list[str]:
    m = manifest if isinstance(manifest, dict) else load_manifest(manifest)
    return list(m["classes"])
