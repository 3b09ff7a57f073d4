"""The memory read's learned scalars of finished study runs: per head, the query-key temperature (log tau; it starts at
log sqrt(head dim)) and, with ``pixel_bias``, the pixel-similarity weight beta (starts at 1). Session 16 asked whether
training teaches the pixel read to trust feature similarity (docs/design.md).

    python benchmarks/regimes/read_scalars.py --dataset brain_tumor_mri_training --network movit_cs_px_vs_pb --regimes 3 --seeds 0
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from run_regimes import REPO, load_trained

import medmem
from medmem.atomic import write_text_atomic


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--network", required=True)
    p.add_argument("--regimes", type=int, nargs="+", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "regimes")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "read_scalars.md")
    args = p.parse_args()
    manifest = medmem.data.load_manifest(medmem.engine.resolve_manifest(args.dataset))
    lines = ["# The memory read's learned scalars", "", f"`python benchmarks/regimes/read_scalars.py --dataset {args.dataset} --network {args.network} "
             f"--regimes {' '.join(map(str, args.regimes))} --seeds {' '.join(map(str, args.seeds))}`", "",
             "| dataset | network | regime % | seed | layer | log tau per head (start) | pixel beta per head (start 1) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    def fmt(t: torch.Tensor) -> str:
        return ", ".join(f"{v:.2f}" for v in t.tolist())

    for regime in args.regimes:
        for seed in args.seeds:
            net = load_trained(args.dataset, args.network, regime, seed, args.runs, manifest)
            for i, layer in enumerate(net.memory_layers()):
                beta = fmt(layer.pixel_beta.detach()) if layer.pixel_bias else "-"
                start = math.log(math.sqrt(layer.dim_head))
                lines.append(f"| {args.dataset} | {args.network} | {regime} | {seed} | {i} | {fmt(layer.log_tau.detach())} ({start:.2f}) | {beta} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out.exists():  # one file for several invocations: keep earlier tables
        text = args.out.read_text() + "\n" + text
    write_text_atomic(text, args.out)


if __name__ == "__main__":
    with torch.no_grad():
        main()
