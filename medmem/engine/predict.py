"""Predictions over a list or folder of images with a trained checkpoint.

Every input is loaded on its own, so a corrupt or unsupported file lands in ``errors.csv`` (file,
reason) and the run goes on. Output tables are written atomically.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from medmem.atomic import write_text_atomic
from medmem.data.manifest import is_hidden
from medmem.data.readers import ImageLoadError


def collect_inputs(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Files under the given files/folders (recursively), hidden files skipped, sorted."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(str(f) for f in sorted(p.rglob("*")) if f.is_file() and not any(is_hidden(part) for part in f.relative_to(p).parts))
        else:
            found.append(str(p))
    return found


def describe_failure(exc: BaseException) -> str:
    """The reason behind a failed transform chain (MONAI wraps errors in ``RuntimeError``)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ImageLoadError):
            return cause.reason
        if cause.__cause__ is None:
            break
        cause = cause.__cause__
    return f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"


def csv_text(header: list[str], rows: Iterable[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


@torch.no_grad()
def predict_files(
    network: torch.nn.Module,
    files: Sequence[str],
    transform: Callable[[dict], dict],
    output_dir: str | os.PathLike,
    class_names: Sequence[str],
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    inferer: Callable[[torch.Tensor, torch.nn.Module], torch.Tensor] | None = None,
) -> dict:
    """Write ``predictions.csv`` (file, predicted class, one probability column per class) and
    ``errors.csv`` (file, reason). Returns counts. ``inferer`` (a MONAI inferer, e.g. the case vote's
    :class:`~medmem.engine.case_vote.CaseVoteInferer`) makes the logits from a batch (B, C, *spatial) and the network."""
    network.eval().to(device)
    rows: list[list] = []
    errors: list[list] = []
    pending: list[tuple[str, torch.Tensor]] = []

    def flush() -> None:
        if not pending:
            return
        x = torch.stack([t for _, t in pending]).to(device)
        probs = (network(x) if inferer is None else inferer(x, network)).softmax(-1).cpu()
        for (path, _), p in zip(pending, probs):
            rows.append([path, class_names[int(p.argmax())]] + [f"{v:.6f}" for v in p.tolist()])
        pending.clear()

    for path in files:
        try:
            pending.append((path, transform({"image": path})["image"]))
        except Exception as exc:  # a file that cannot be used: report it, go on
            errors.append([path, describe_failure(exc)])
        if len(pending) == batch_size:
            flush()
    flush()
    out = Path(output_dir)
    write_text_atomic(csv_text(["file", "predicted"] + [f"prob_{c}" for c in class_names], rows), out / "predictions.csv")
    write_text_atomic(csv_text(["file", "reason"], errors), out / "errors.csv")
    print(f"predicted {len(rows)} image(s), {len(errors)} error(s): {out / 'predictions.csv'}")
    return {"predicted": len(rows), "errors": len(errors), "output_dir": str(out)}
