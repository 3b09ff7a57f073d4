"""Checkpoints for the bundle configs: saving them safely, finding the last one, resolving manifests."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import monai.handlers
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver

import medmem


class ReplacingDiskSaver(DiskSaver):
    """ignite's ``DiskSaver`` that writes atomically and removes old files only after the new one is saved.

    ignite's ``Checkpoint`` removes the file it is about to supersede, then saves the new one: a kill in between
    leaves no last-epoch checkpoint, or, with a fixed file name such as ``model_full.pt``, no best model at all.
    Here removals wait for the next save; a fixed-name file is never removed, since the save replaces it.

    Args:
        dirname: the folder the files go to.
        filename: a fixed file name for every save (MONAI's ``key_metric_filename``), or None for ignite's names.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, atomic=True, require_empty=False)
        self.filename = filename
        self._superseded: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint, self.filename or filename, metadata)
        if self.filename is None:
            for old in self._superseded:
                super().remove(old)
        self._superseded = []

    def remove(self, filename: str) -> None:
        self._superseded.append(filename)


class CheckpointSaver(monai.handlers.CheckpointSaver):
    """MONAI's ``CheckpointSaver`` whose files survive a crash and whose best-model record survives a resume.

    - Saves go through ``ReplacingDiskSaver``: MONAI writes in place (``atomic=False``, because older ignite left the
      temporary file readable by its owner only; the pinned ignite restores group and other read) and deletes
      ``model_full.pt`` before writing its successor, so a kill during a save could lose the best model.
    - MONAI can load the key-metric record (``load_state_dict``) but only saves it inside the best-model file itself
      (``key_metric_save_state``), which would turn ``model_full.pt`` from a plain state dict into a dict of objects.
      ``state_dict`` lets the last-epoch checkpoint carry the record instead; without it the first validation after
      a resume overwrites ``model_full.pt`` however badly it scores. The evaluator's best metric and epoch travel
      with it, so the log's "best value" stays right across a resume.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._key_metric_checkpoint, self._interval_checkpoint, self._final_checkpoint):
            if checkpoint is not None:
                monai_saver = checkpoint.save_handler
                checkpoint.save_handler = ReplacingDiskSaver(monai_saver.dirname, monai_saver.filename)
        self._engine: Engine | None = None

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        self._engine = engine
        if self._interval_checkpoint is not None and self.epoch_level and self.save_interval > 1:
            # resuming and the study's `finished` need the last epoch on disk, which every=N skips unless N divides it
            engine.add_event_handler(Events.COMPLETED, self._save_last_epoch)

    def _save_last_epoch(self, engine: Engine) -> None:
        if engine.state.epoch % self.save_interval != 0:
            self.interval_completed(engine)

    def adopt(self, checkpoint: str | os.PathLike | None) -> None:
        """Count an existing ``checkpoint_epoch=N.pt`` (the one a resume starts from) as this saver's latest save.

        Without it the resumed saver's list of files is empty, the next save keeps the old file beside the new, and
        each resume leaves one more checkpoint behind. ``None`` (not resuming) does nothing.
        """
        if checkpoint is None or self._interval_checkpoint is None:
            return
        name = Path(checkpoint).name
        found = re.search(r"epoch=(\d+)", name)
        if found is None:
            raise ValueError(f"{checkpoint}: not a checkpoint_epoch=N.pt file, cannot adopt it")
        self._interval_checkpoint.load_state_dict({"_saved": [(int(found.group(1)), name)]})

    def state_dict(self) -> dict:
        """The best-model record: ``{"_saved": [(score, filename)], "best_metric", "best_metric_epoch"}``."""
        if self._key_metric_checkpoint is None:
            raise ValueError("this CheckpointSaver keeps no best model (save_key_metric is False), so it has no record to save")
        state: dict = {"_saved": self._key_metric_checkpoint.state_dict()["_saved"]}
        if self._engine is not None:
            state["best_metric"] = float(getattr(self._engine.state, "best_metric", -1))
            state["best_metric_epoch"] = int(getattr(self._engine.state, "best_metric_epoch", -1))
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict({"_saved": state_dict["_saved"]})
        if self._engine is not None and "best_metric" in state_dict:
            self._engine.state.best_metric = state_dict["best_metric"]
            self._engine.state.best_metric_epoch = state_dict["best_metric_epoch"]


def checkpoint_interval(interval: int, val_interval: int) -> int:
    """Epochs between last-epoch checkpoints, checked against ``val_interval``.

    The last checkpoint carries the best-model record (``CheckpointSaver.state_dict``). A validation that falls between
    two checkpoints can improve the best model without the record knowing; a resume from the earlier checkpoint would then
    let a worse model replace ``model_full.pt``. So every validation epoch must also be a checkpoint epoch: ``interval``
    must divide ``val_interval``. The final epoch is always saved (``CheckpointSaver`` with ``save_interval`` > 1).
    """
    interval, val_interval = int(interval), int(val_interval)
    if interval < 1 or val_interval % interval != 0:
        raise ValueError(
            f"checkpoint_interval {interval} must be a positive divisor of val_interval {val_interval}: a validation between "
            "two checkpoints could improve model_full.pt without the checkpoint's best-model record, and a resume would "
            "then let a worse model replace it"
        )
    return interval


def objects_in_checkpoint(checkpoint: str | os.PathLike | None, objects: dict[str, Any]) -> dict[str, Any]:
    """``objects`` less those that the checkpoint file does not hold, with a warning naming them.

    A checkpoint written by an older bundle lacks newer entries (the best-model record); ignite would refuse to load it.
    """
    if checkpoint is None:
        return objects
    import warnings

    import torch

    held = torch.load(checkpoint, map_location="cpu", weights_only=True).keys()
    missing = sorted(set(objects) - set(held))
    if missing:
        warnings.warn(f"{checkpoint} holds no {', '.join(missing)} (written by an older bundle); resuming without them", stacklevel=2)
    return {k: v for k, v in objects.items() if k in held}


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
