"""How the near-duplicate threshold groups a folder: groups, largest group and grouped images per threshold.

    python benchmarks/near_duplicate_threshold.py brain_tumor_mri/Training --thresholds 0.01 0.02 0.03 0.04

Backs the choice of ``medmem.data.near_duplicates.DEFAULT_THRESHOLD``: the largest value whose largest group
stays a handful of images (a larger one chains distinct scans into one group). Reads ``$MEDMEM_DATA_ROOT``;
writes ``benchmarks/results/near_duplicate_threshold.md``.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path

from medmem.atomic import write_text_atomic
from medmem.data.manifest import scan_class_folders
from medmem.data.near_duplicates import linked_components, thumbnails
from medmem.paths import resolve_data_root

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="class-per-folder tree, relative to the data root")
    p.add_argument("--thresholds", nargs="+", type=float, default=[0.01, 0.02, 0.03, 0.04])
    args = p.parse_args()
    root = resolve_data_root()
    thumbs = thumbnails(root, scan_class_folders(root, args.folder))
    lines = [
        f"# Near-duplicate threshold on {args.folder}",
        "",
        f"Made by `python benchmarks/near_duplicate_threshold.py {args.folder} --thresholds {' '.join(map(str, args.thresholds))}`.",
        f"{len(thumbs)} images (byte-identical copies included), 64 px grey thumbnails, mean absolute difference.",
        "",
        "| threshold | groups | largest group | images in groups of 2+ |",
        "|---|---|---|---|",
    ]
    for t in args.thresholds:
        sizes = Counter(linked_components(thumbs, t)).values()
        lines.append(f"| {t} | {len(sizes)} | {max(sizes)} | {sum(s for s in sizes if s > 1)} |")
        print(lines[-1], flush=True)
    write_text_atomic("\n".join(lines) + "\n", REPO / "benchmarks" / "results" / "near_duplicate_threshold.md")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
