"""Throughput of ``medmem predict`` on this machine: 2D images and 3D volumes.

    python benchmarks/predict_speed.py --out benchmarks/results/predict_speed.md

Builds a deployable model (default size: 64 px, patch 8, width 192, depth 6, 256 prototypes; weights
untrained, which does not change the speed), then times whole runs of ``run_prediction`` (discovery,
decoding, transforms, network, evidence, outputs) over (a) PBC JPEG images from the data root and
(b) NIfTI volumes (nibabel's 33x41x25 test volume, copied) reduced to their middle slice. Reports the
median images per second over ``--repeats`` runs, with min-max.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from medmem.atomic import write_text_atomic
from medmem.engine.batch_predict import run_prediction
from medmem.engine.summarize import write_model_card
from medmem.networks import MemoryViT


def make_model(folder: Path) -> Path:
    torch.manual_seed(0)
    model = MemoryViT(3, 64, 8, 8, memory_mode="prototypes", num_prototypes=256).eval()
    torch.save(model.state_dict(), folder / "model.pt")
    write_model_card(model, str(folder / "model.json"), [f"class{i}" for i in range(8)], {}, None)
    return folder / "model.pt"


def time_runs(inputs: Path, model: Path, work: Path, repeats: int, n: int, workers: int) -> dict:
    rates = []
    for r in range(repeats):
        start = time.perf_counter()
        run_prediction([str(inputs)], str(model), str(work / f"out{r}"), batch_size=64, workers=workers)
        rates.append(n / (time.perf_counter() - start))
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "n": n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/predict_speed.md")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--volumes", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=1, help="decoding worker processes")
    args = p.parse_args()
    data_root = Path(os.environ["MEDMEM_DATA_ROOT"])
    from nibabel.testing import data_path

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = make_model(work)
        images, volumes = work / "images", work / "volumes"
        images.mkdir()
        volumes.mkdir()
        cells = sorted((data_root / "pbc_blood_cells_96").rglob("*.jpg"))[: args.images]
        for i, f in enumerate(cells):
            (images / f"{i:05d}.jpg").symlink_to(f)
        for i in range(args.volumes):
            shutil.copy(os.path.join(data_path, "anatomical.nii"), volumes / f"{i:04d}.nii")
        rows = {"2D JPEG 96x96 -> 64x64": time_runs(images, model, work, args.repeats, len(cells), args.workers),
                "3D NIfTI 33x41x25 -> middle slice": time_runs(volumes, model, work, args.repeats, args.volumes, args.workers)}  # fmt: skip
    lines = [
        "# medmem predict throughput",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads; torch {torch.__version__}. Whole runs (discovery, decoding,",
        f"transforms, network, evidence, outputs), batch 64, {args.workers} decoding worker(s), {args.repeats} repeats.",
        "",
        "| input | inputs per run | images/s median | min-max |",
        "|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['n']} | {r['median']:.1f} | {r['min']:.1f}-{r['max']:.1f} |")
    text = "\n".join(lines) + "\n"
    write_text_atomic(text, args.out)
    print(text)


if __name__ == "__main__":
    main()
