"""Where the trunk case vote's time goes: the frozen trunk's forward pass against the search of its stored cases.

    python benchmarks/case_vote_speed.py --out benchmarks/results/case_vote_speed.md

Why: the memory ViT's prototypes exist to make its memory read fast (issue #6, target 3). Whether the trunk case vote
(``case_vote.json --case_vote_space trunk``) needs such a summary depends on how much of its time the search of the
stored cases takes. This times, for a batch of images, the trunk's class-token features alone (``descriptors``), the
whole vote (``vote``: features, search of the bank, label vote) and the search and vote alone (the same call with the
batch's features computed beforehand), at bank sizes of PBC's regimes (``--sizes``: 120,
1,195 and 11,951 training images at 1, 10 and 100%) and at 256 rows (what 32 prototypes per class of 8 would leave).
The trunk is the bundle default (64 px, patch 8, width 192, depth 6, 3 heads, conv stem) with random weights and the
bank random unit vectors: the speed does not depend on their values. Medians over ``--repeats`` runs after two warm-up
runs (``memory_speed.timed``), with the min-max spread.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_speed import timed  # noqa: E402

from medmem.atomic import write_text_atomic  # noqa: E402
from medmem.memory.trunk_vote import TrunkCaseVote  # noqa: E402

TRUNK = {"img_size": 64, "patch_size": 8, "in_channels": 3, "spatial_dims": 2, "hidden_size": 192, "mlp_dim": 768,
         "num_layers": 6, "num_heads": 3, "stem": "conv"}  # fmt: skip


def filled_vote(rows: int, num_classes: int = 8, k: int = 10) -> TrunkCaseVote:
    """A trunk case vote whose bank holds ``rows`` random unit vectors with random labels (its weight set to 0.5)."""
    g = torch.Generator().manual_seed(0)
    vote = TrunkCaseVote(num_classes, TRUNK, k=k).eval()
    vote.load_encoder(vote.encoder.state_dict())  # its own random weights, marked as a loaded trunk
    vote.bank = torch.nn.functional.normalize(torch.randn(rows, TRUNK["hidden_size"], generator=g), dim=-1)
    vote.labels = torch.randint(0, num_classes, (rows,), generator=g)
    vote.sample_ids = torch.arange(rows)
    vote.weight.fill_(0.5)
    return vote


def span(t: dict) -> str:
    """A ``timed`` result as "median (min-max)" seconds."""
    return f"{t['median_s']:.4f} ({t['min_s']:.4f}-{t['max_s']:.4f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", type=int, default=[120, 256, 1195, 11951], help="stored cases")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results/case_vote_speed.md")
    args = p.parse_args()
    images = torch.rand(
        args.batch, TRUNK["in_channels"], TRUNK["img_size"], TRUNK["img_size"], generator=torch.Generator().manual_seed(1)
    )
    rows = []
    with torch.no_grad():
        for size in args.sizes:
            vote = filled_vote(size)
            trunk = timed(lambda: vote.descriptors(images), args.repeats)
            whole = timed(lambda: vote.vote(images), args.repeats)
            # the search and the vote alone, through the same code, with the batch's features computed once beforehand
            features = vote.descriptors(images)
            vote.descriptors = lambda _images: features
            search = timed(lambda: vote.vote(images), args.repeats)
            rows.append((size, trunk, whole, search))
            print(
                f"{size} cases: trunk {trunk['median_s']:.4f} s, whole vote {whole['median_s']:.4f} s, search {search['median_s']:.5f} s",
                flush=True,
            )
    lines = [
        "# Trunk case vote: time per batch",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"Machine: {platform.machine()}, {platform.platform()}; torch {torch.__version__}, {torch.get_num_threads()} threads. "
        f"Batch {args.batch} images of 3x64x64, k = 10; medians of {args.repeats} runs after two warm-up runs (min-max).",
        "",
        "| stored cases | trunk features s | whole vote s | search and vote alone s | search and vote / whole |",
        "|---|---|---|---|---|",
    ]
    for size, trunk, whole, search in rows:
        lines.append(
            f"| {size} | {span(trunk)} | {span(whole)} | {span(search)} | {100 * search['median_s'] / whole['median_s']:.1f}% |"
        )
    write_text_atomic("\n".join(lines) + "\n", args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
