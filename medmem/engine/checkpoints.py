"""Finding checkpoints and manifests for the bundle configs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import medmem


def find_last_checkpoint(ckpt_dir: str | os.PathLike) -> str | None:
    """Path of the newest ``checkpoint_epoch=N.pt`` in ``ckpt_dir`` (highest N), or None."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    found = []
    for p in folder.glob("checkpoint_epoch=*.pt"):
        m = re.search(r"epoch=(\d+)", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return str(max(found)[1]) if found else None


def resolve_manifest(name_or_path: str) -> str:
    """A manifest path from a path, or a name in ``$MEDMEM_MANIFESTS`` or the repo's ``data_manifests/``."""
    p = Path(name_or_path)
    if p.is_file():
        return str(p.resolve())
    stem = p.name if p.suffix == ".json" else f"{p.name}.json"
    folders = [os.environ.get("MEDMEM_MANIFESTS"), Path(medmem.__file__).resolve().parent.parent / "data_manifests"]
    for folder in folders:
        if folder and (Path(folder) / stem).is_file():
            return str((Path(folder) / stem).resolve())
    raise FileNotFoundError(f"manifest {name_or_path!r} not found (looked in: path, {', '.join(str(f) for f in folders if f)})")
