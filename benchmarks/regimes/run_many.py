"""Run many study cells at once on a machine with more cores (and a GPU): one ``run_regimes.py`` process per
(dataset, regime, seed), ``--workers`` at a time, rows merged into one results file as each process ends.

    python benchmarks/regimes/run_many.py --datasets pneumoniamnist brain_tumor_mri_training --models vit_cs movit_cs \
        vit_cs_knn --regimes 1 3 10 --seeds 0 1 2 3 4 5 6 7 8 9 --workers 14 --out benchmarks/results/gpu_replication.csv

Processes start seed by seed (all cells of seed 0 first), so a run cut short still holds whole seeds where it can.
``--stop_after_s`` stops starting processes after that many seconds and ``--kill_after_s`` ends the ones still running
(their cells leave no row), so the run ends inside a lease of fixed length. Each process writes its own rows file
(``<out>.parts/``); the merged ``--out`` is rewritten after each one ends. Cells already in ``--out`` are skipped, as
``run_regimes.py`` skips them, so a second call resumes. Each process runs with one CPU thread (``OMP_NUM_THREADS=1``);
the bundle trains on the GPU where torch sees one.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_regimes import DATASETS, REPO, append_rows, read_rows  # noqa: E402

DRIVER = Path(__file__).resolve().parent / "run_regimes.py"


def units(datasets: list[str], regimes: list[int], seeds: list[int], models: list[str], per_model: bool = False) -> list[tuple[str, int, int, list[str]]]:
    """(dataset, regime, seed, models) in the order processes start: seed by seed, then regime, then dataset (then model).

    One process runs all ``models`` of its cell in order, since a post-hoc model (``vit_cs_knn``, ``*_proto``) reads the
    network trained before it; ``per_model`` gives each model a process of its own, for trained networks only."""
    groups = [[m] for m in models] if per_model else [list(models)]
    return [(d, r, s, g) for s, r, d, g in itertools.product(seeds, regimes, datasets, groups)]


def merge_parts(out: Path, parts: list[Path]) -> int:
    """Append to ``out`` the rows of ``parts`` that it lacks (by dataset, model, regime, seed); returns how many."""
    key = lambda r: (r["dataset"], r["model"], str(r["regime"]), str(r["seed"]))  # noqa: E731
    have = {key(r) for r in read_rows(out)}
    new = [r for p in parts for r in read_rows(p) if key(r) not in have]
    if new:
        append_rows(out, new)
    return len(new)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", required=True, choices=sorted(DATASETS))
    p.add_argument("--models", nargs="+", required=True, help="run_regimes.py models, run in this order within a process")
    p.add_argument("--regimes", nargs="+", type=int, required=True)
    p.add_argument("--seeds", nargs="+", type=int, required=True)
    p.add_argument("--per_model", action="store_true", help="one process per model too (trained networks only: no post-hoc models)")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    p.add_argument("--out", required=True)
    p.add_argument("--runs", default=str(REPO / "runs" / "regimes"))
    p.add_argument("--stop_after_s", type=float, default=float("inf"), help="start no process after this many seconds")
    p.add_argument("--kill_after_s", type=float, default=float("inf"), help="end processes still running after this many seconds")
    args = p.parse_args()

    out = Path(args.out)
    parts_dir = out.with_name(out.name + ".parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    todo, running, parts = units(args.datasets, args.regimes, args.seeds, args.models, args.per_model), {}, []
    start = time.time()
    while todo or running:
        elapsed = time.time() - start
        while todo and len(running) < args.workers and elapsed < args.stop_after_s:
            dataset, regime, seed, models = todo.pop(0)
            part = parts_dir / (f"{dataset}_r{regime}_s{seed}" + (f"_{models[0]}" if args.per_model else "") + ".csv")
            cmd = [sys.executable, str(DRIVER), "--dataset", dataset, "--models", *models, "--regimes", str(regime),
                   "--seeds", str(seed), "--out", str(part), "--runs", args.runs]  # fmt: skip
            log = open(part.with_suffix(".log"), "a")
            # a session of its own, so that ending it ends the bundle process it started too
            running[subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)] = (part, log)
            parts.append(part)
            print(f"[{elapsed:6.0f} s] start {dataset} regime {regime}% seed {seed} {' '.join(models)}", flush=True)
        if elapsed >= args.stop_after_s and todo:
            print(f"[{elapsed:6.0f} s] stop: {len(todo)} processes not started", flush=True)
            todo = []
        for proc in [q for q in running if q.poll() is not None]:
            part, log = running.pop(proc)
            log.close()
            print(f"[{time.time() - start:6.0f} s] end rc={proc.returncode} {part.stem}; {merge_parts(out, parts)} rows merged", flush=True)
        if elapsed >= args.kill_after_s:
            for proc, (part, log) in running.items():
                os.killpg(proc.pid, signal.SIGKILL)
                log.close()
                print(f"[{elapsed:6.0f} s] killed {part.stem}", flush=True)
            running = {}
        time.sleep(1)
    print(f"{merge_parts(out, parts)} rows merged at the end; {len(read_rows(out))} rows in {out}", flush=True)


if __name__ == "__main__":
    main()
