"""Where medmem finds data: a data root given on the command line or by ``MEDMEM_DATA_ROOT``."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ROOT_ENV = "MEDMEM_DATA_ROOT"


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """Return the data root: the argument if given, else ``$MEDMEM_DATA_ROOT``.

    Raises:
        FileNotFoundError: neither is set, or the folder does not exist.
    """
    chosen = data_root if data_root not in (None, "") else os.environ.get(DATA_ROOT_ENV)
    if not chosen:
        raise FileNotFoundError(
            f"no data root: pass --data-root (or data_root=...) or set {DATA_ROOT_ENV} "
            "to the folder that holds the datasets (e.g. ../shared/datasets)"
        )
    root = Path(chosen).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} is not a folder")
    return root
