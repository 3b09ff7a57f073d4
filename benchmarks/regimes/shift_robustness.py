"""Does training through the memory make a ViT more robust to image shift? Plain against memory ViT
on the validation split under controlled intensity (and, for RGB, colour) shifts that training never showed.

    python benchmarks/regimes/shift_robustness.py --dataset pbc_blood_cells_96 --pair vit_cs movit_cs --regimes 1 3 --seeds 0 1 2

Why: on the two shifted test sets this project has (PneumoniaMNIST's test split, brain MRI's Testing
folder) the memory ViT's head beats the plain ViT by more than it does on in-distribution validation
images (``head_vs_vote.py --eval-on``). These shifts ask the same of every dataset, PBC included.
Training augments only geometry (flips, turns, small affine), so every shift here is unseen. Each
shift is a MONAI array transform applied to the evaluation-transformed image (values in [0, 1]).
Writes ``benchmarks/results/shift_robustness_<dataset>_<plain>_<memory>.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from head_vs_vote import load, trained_pairs  # noqa: E402
from run_regimes import DATASETS, REPO, load_arrays, require_data_root  # noqa: E402
from write_vs_train import evaluate  # noqa: E402

# stain / staining-protocol colour casts for RGB smears and slides: red up and blue down by this fraction
COLOUR_CASTS = (0.08, 0.15)


def shifts(channels: int) -> dict:
    """Name -> transform of one channel-first image (C, H, W) in [0, 1]; the noise is seeded per image set.

    The gammas 0.8 / 1.25 are the mild pair: 0.5 / 2 put PBC's networks at chance. The colour cast applies
    to RGB datasets only (``channels == 3``).
    """
    from monai.transforms import AdjustContrast, GaussianSmooth, RandGaussianNoise

    noise = RandGaussianNoise(prob=1.0, std=0.05)
    noise.set_random_state(seed=0)
    named = {
        "none": lambda img: img,
        "gamma 0.5 (brighter)": AdjustContrast(gamma=0.5),
        "gamma 2 (darker)": AdjustContrast(gamma=2.0),
        "gamma 0.8 (slightly brighter)": AdjustContrast(gamma=0.8),
        "gamma 1.25 (slightly darker)": AdjustContrast(gamma=1.25),
        "Gaussian blur, sigma 1 px": GaussianSmooth(sigma=1.0),
        "Gaussian noise, std 0.05": lambda img: noise(img).clamp(0.0, 1.0),
    }
    if channels == 3:
        for cast in COLOUR_CASTS:
            gain = torch.tensor([1 + cast, 1.0, 1 - cast]).view(3, 1, 1)
            named[f"colour cast, R x{1 + cast:g}, B x{1 - cast:g}"] = lambda img, gain=gain: (torch.as_tensor(img) * gain).clamp(0.0, 1.0)
    return named


def shifted(x: torch.Tensor, transform) -> torch.Tensor:
    """(N, C, H, W) images, each through ``transform``."""
    return torch.stack([torch.as_tensor(transform(img), dtype=torch.float32) for img in x])


def points(deltas: list[float]) -> str:
    """Accuracy differences as 'mean ± sd' in points (one decimal)."""
    mean = 100 * statistics.mean(deltas)
    return f"{mean:+.1f} ± {100 * statistics.stdev(deltas):.1f}" if len(deltas) > 1 else f"{mean:+.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="pbc_blood_cells_96", choices=sorted(DATASETS))
    p.add_argument("--pair", nargs=2, default=["vit_cs", "movit_cs"], metavar=("PLAIN", "MEMORY"), help="driver model names of the two networks")
    p.add_argument("--regimes", nargs="+", type=int, default=[1, 3])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--root", default=str(REPO / "runs" / "regimes"))
    args = p.parse_args()
    require_data_root()
    import medmem
    from medmem.atomic import write_text_atomic

    c = len(medmem.data.load_manifest(medmem.engine.resolve_manifest(args.dataset))["classes"])
    cfg = DATASETS[args.dataset]
    x, y = load_arrays(args.dataset, "validation", None, cfg["image_size"], cfg["in_channels"])
    views = {name: shifted(x, t) for name, t in shifts(cfg["in_channels"]).items()}
    rows, deltas = [], {}
    for regime, seed, runs in trained_pairs(args.root, args.dataset, args.pair, args.regimes, args.seeds):
        nets = [load(args.dataset, n, runs[n], c) for n in args.pair]
        for name, view in views.items():
            plain, memory = (evaluate(net, view, y, c)["acc"] for net in nets)
            deltas.setdefault((regime, name), []).append(memory - plain)
            rows.append(f"| {regime} | {seed} | {name} | {plain:.3f} | {memory:.3f} | {100 * (memory - plain):+.1f} |")
            print(rows[-1], flush=True)
    plain_name, memory_name = args.pair
    lines = [
        f"# Robustness to unseen intensity and colour shifts ({args.dataset}, validation split)",
        "",
        f"Made by `python benchmarks/regimes/shift_robustness.py --dataset {args.dataset} --pair {plain_name} {memory_name} "
        f"--regimes {' '.join(map(str, args.regimes))} --seeds {' '.join(map(str, args.seeds))}` (machine: {platform.machine()}, "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}), on the study's trained networks; validation ACC over {len(y)} images,",
        f"each shifted as named (MONAI `AdjustContrast`, `GaussianSmooth`, `RandGaussianNoise` with seed 0; RGB only: colour casts scaling red up and blue down by {' and '.join(f'{c:g}' for c in COLOUR_CASTS)}). Plain ViT: `{plain_name}`; memory ViT: `{memory_name}`.",
        "",
        "| regime % | seed | shift | plain ViT ACC | memory ViT ACC | memory - plain, points |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "Memory minus plain, points, mean ± standard deviation over seeds:",
        "",
        "| regime % | shift | n | memory - plain |",
        "|---|---|---|---|",
        *(f"| {r} | {name} | {len(v)} | {points(v)} |" for (r, name), v in deltas.items()),
    ]
    out = REPO / "benchmarks" / "results" / f"shift_robustness_{args.dataset}_{plain_name}_{memory_name}.md"
    write_text_atomic("\n".join(lines) + "\n", out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
