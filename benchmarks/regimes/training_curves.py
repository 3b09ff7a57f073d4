"""Is a regime limited by its training budget or by its data? The validation curves of the study's runs.

    python benchmarks/regimes/training_curves.py --dataset pbc_blood_cells_96 --networks vit_cs movit_cs --regimes 1 3 10 100

Every trained run ``runs/regimes/<dataset>/<network>_r<R>_s<S>`` logged validation ACC to TensorBoard
(the bundle's ``val_interval``, ten points per run). For each run: the best validation ACC and the share of
the epoch budget at which the curve first came within one point of it (``plateau at``), and the gain over
the last 30 percent of the budget (last point minus the best point before 70 percent). A curve that
plateaus early and gains nothing late is limited by its data, not by the number of optimiser steps; one
still climbing at the end would gain from a longer budget. Writes
``benchmarks/results/training_curves_<dataset>.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_regimes import REPO  # noqa: E402

WITHIN = 0.01  # "plateaued": first validation point within this of the run's best
LATE = 0.7  # the last 30 percent of the budget


def validation_curve(run: Path) -> list[tuple[int, float]]:
    """(epoch, validation ACC) points of one run, in epoch order (empty if it logged none)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, float] = {}
    for events in sorted(run.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if "val_acc" in acc.Tags()["scalars"]:
            points.update({e.step: e.value for e in acc.Scalars("val_acc")})
    return sorted(points.items())


def curve_summary(curve: list[tuple[int, float]], epochs: int) -> dict:
    """Best ACC, the budget share where the curve first came within ``WITHIN`` of it, and the late gain.

    >>> curve_summary([(2, 0.5), (4, 0.8), (6, 0.85), (8, 0.86), (10, 0.86)], 10)
    {'best': 0.86, 'plateau_at': 0.6, 'late_gain': 0.01}
    """
    best = max(acc for _, acc in curve)
    plateau = next(epoch for epoch, acc in curve if acc >= best - WITHIN)
    early = [acc for epoch, acc in curve if epoch <= LATE * epochs]
    late_gain = curve[-1][1] - max(early) if early else float("nan")
    return {"best": round(best, 4), "plateau_at": round(plateau / epochs, 2), "late_gain": round(late_gain, 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="pbc_blood_cells_96")
    p.add_argument("--networks", nargs="+", default=["vit_cs", "movit_cs"])
    p.add_argument("--regimes", nargs="+", type=int, default=[1, 3, 10, 30, 100])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--root", default=str(REPO / "runs" / "regimes"))
    p.add_argument("--out", help="Markdown file to write (default benchmarks/results/training_curves_<dataset>.md); "
                   "give another name when the runs behind the default file are no longer on disk, so that file is kept")
    args = p.parse_args()
    from medmem.atomic import write_text_atomic

    rows = []
    for network in args.networks:
        for regime in args.regimes:
            found = []
            for seed in args.seeds:
                run = Path(args.root) / args.dataset / f"{network}_r{regime}_s{seed}"
                checkpoints = sorted((run / "models").glob("checkpoint_epoch=*.pt"))
                curve = validation_curve(run) if run.is_dir() else []
                if not curve or not checkpoints:
                    continue
                epochs = int(checkpoints[-1].stem.split("=")[1])  # the run's last epoch: its budget
                found.append(curve_summary(curve, epochs) | {"seed": seed, "epochs": epochs})
            if not found:
                continue
            mean = lambda key: statistics.mean(f[key] for f in found)  # noqa: E731
            per_seed = ", ".join(f"{f['late_gain'] * 100:+.1f}" for f in found)
            rows.append(
                f"| {network} | {regime} | {len(found)} | {found[0]['epochs']} | {mean('best'):.3f} | {mean('plateau_at'):.2f} | "
                f"{mean('late_gain') * 100:+.1f} ({per_seed}) |"
            )
            print(rows[-1], flush=True)
    lines = [
        f"# Validation curves of the regime study ({args.dataset})",
        "",
        f"Made by `python benchmarks/regimes/training_curves.py --dataset {args.dataset} --networks {' '.join(args.networks)} "
        f"--regimes {' '.join(map(str, args.regimes))} --seeds {' '.join(map(str, args.seeds))}{f' --out {args.out}' if args.out else ''}` (machine: {platform.machine()}, {os.cpu_count()} CPU cores) from the runs' TensorBoard logs",
        f"(validation ACC, ten points per run). `plateau at`: share of the epoch budget at which validation ACC first came within {WITHIN * 100:g} point",
        f"of the run's best; `late gain`: last point minus the best point before {LATE * 100:g}% of the budget, in points (per seed in brackets).",
        "Mean over the seeds found.",
        "",
        "| network | regime % | seeds | epochs | best val ACC | plateau at | late gain, points |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"training_curves_{args.dataset}.md"
    write_text_atomic("\n".join(lines) + "\n", out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
