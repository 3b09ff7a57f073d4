"""Is the bundle's self-supervised pre-training repeatable? The same tiny pre-training (PBC regime 1, one epoch, seed 0)
run twice with one thread, and once with two, through ``python -m monai.bundle run``; prints and writes the largest
weight difference between the trunks.

    MEDMEM_DATA_ROOT=../shared/datasets python benchmarks/pretrain_repeatability.py

Why: the study's PBC trunk, pre-trained again with the same recipe and seed in session 27, gave a frozen k-NN of 0.831
against 0.837 (docs/design.md "Session 27"). Results: ``benchmarks/results/pretrain_repeatability.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from medmem.atomic import write_text_atomic  # noqa: E402
from tests.test_bundle import TINY, bundle  # noqa: E402  (the bundle runner and tiny network the tests use)


def pretrain(out: Path, threads: int) -> dict[str, torch.Tensor]:
    """The trunk of one tiny pre-training run with ``threads`` intra-op threads (OMP_NUM_THREADS)."""
    settings = {**TINY, "memory_mode": "off", "pretrain_regime": 1, "pretrain_batch_size": 32, "pretrain_dir": str(out), "pretrain_epochs": 1}
    bundle("run", ["train.json", "pretrain.json"], settings, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return torch.load(out / "pretrained_trunk.pt", map_location="cpu", weights_only=True)["trunk"]


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/pretrain_repeatability.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        first, again, two = (pretrain(Path(tmp) / name, threads) for name, threads in (("a", 1), ("b", 1), ("c", 2)))
    rows = [("1 thread, run twice", largest_difference(first, again)), ("1 thread against 2 threads", largest_difference(first, two))]
    text = "\n".join([
        "# Is pre-training repeatable?", "",
        "`MEDMEM_DATA_ROOT=../shared/datasets python benchmarks/pretrain_repeatability.py`: bundle `pretrain.json`, tiny network "
        "(tests/test_bundle.py `TINY`), PBC regime 1, 1 epoch, batch 32, seed 0. "
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}.", "",
        "| same recipe and seed | largest weight difference between the trunks |", "|---|---|",
        *[f"| {name} | {value:.3g} |" for name, value in rows], "",
    ])  # fmt: skip
    write_text_atomic(text, args.out)
    print(text)


if __name__ == "__main__":
    main()
