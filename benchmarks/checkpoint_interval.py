"""Wall time of a study cell's training with the last checkpoint written every epoch against every validation.

At 1% a study cell trains one step per epoch, so writing the last checkpoint (network, optimiser, memory) each epoch
is paid once per step. Bundle 0.21.0 writes it with each validation (``checkpoint_interval`` = ``val_interval``)
and at the last epoch. This trains the same cell (brain MRI 1%, the memory ViT ``movit_cs``, seed 0, 300 epochs,
``val_interval`` 30, as ``benchmarks/regimes/run_regimes.py`` sets it) with ``--checkpoint_interval 1`` and 30,
alternating, ``--repeats`` times each, one torch thread, and checks that both give the same best model to the bit
(``--intensity_augment``: with the bundle's default jitter, whose random draws a save must not disturb either).

    MEDMEM_DATA_ROOT=../shared/datasets python benchmarks/checkpoint_interval.py --repeats 2 \
        --out benchmarks/results/checkpoint_interval.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "bundles" / "movit_classification"
CELL = {
    "dataset": "brain_tumor_mri_training", "regime": 1, "seed": 0, "epochs": 300, "val_interval": 30, "batch_size": 64,
    "image_size": 64, "patch_size": 8, "in_channels": 1, "rotate90": "true", "stem": "conv", "intensity_augment": "false",
    "memory_mode": "full", "memory_match": "same_token", "memory_retrieval": "key", "memory_vote": 0.5,
}  # fmt: skip


def train(interval: int, out: Path) -> float:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps([str(BUNDLE / "configs" / "train.json")]),
           "--bundle_root", str(BUNDLE), "--output_dir", str(out), "--checkpoint_interval", str(interval)]  # fmt: skip
    for key, value in CELL.items():
        cmd += [f"--{key}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "checkpoint_interval.md"))
    p.add_argument("--intensity_augment", action="store_true", help="the bundle's default jitter (its random draws too)")
    args = p.parse_args()
    if args.intensity_augment:
        CELL["intensity_augment"] = "true"
    times: dict[int, list[float]] = {1: [], 30: []}
    best: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for interval in (1, 30):
                out = Path(tmp) / f"i{interval}_r{repeat}"
                times[interval].append(train(interval, out))
                best[interval] = torch.load(out / "models" / "model_full.pt", map_location="cpu", weights_only=True)
                print(f"checkpoint_interval {interval}, repeat {repeat}: {times[interval][-1]:.1f} s", flush=True)
    same = best[1].keys() == best[30].keys() and all(torch.equal(best[1][k], best[30][k]) for k in best[1])
    lines = [
        "# Checkpoint interval: a 1% study cell's training time",
        "",
        f"Command: `{' '.join(['python', 'benchmarks/checkpoint_interval.py', '--repeats', str(args.repeats), '--out', os.path.relpath(args.out, REPO)] + (['--intensity_augment'] if args.intensity_augment else []))}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; torch {torch.__version__}, one thread per run.  ",
        f"Cell: `{json.dumps(CELL)}` (the study's `{'movit_cs_ia' if args.intensity_augment else 'movit_cs'}` at brain MRI 1%, seed 0: one optimiser step per epoch).  ",
        "Wall time of `train.json` (process start to exit, data caching included); runs alternate between the two settings.",
        "",
        "| checkpoint_interval | last checkpoints written | wall s, each run | median s |",
        "|---|---|---|---|",
    ]
    for interval, walls in times.items():
        written = CELL["epochs"] // interval
        lines.append(f"| {interval} | {written} | {', '.join(f'{w:.1f}' for w in walls)} | {statistics.median(walls):.1f} |")
    saved = statistics.median(times[1]) - statistics.median(times[30])
    lines += ["", f"Median saving: {saved:.1f} s ({100 * saved / statistics.median(times[1]):.0f}% of the run).",
              f"Same best model (`model_full.pt`, every tensor, memory included) from both settings: {'yes' if same else 'NO'}."]  # fmt: skip
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
