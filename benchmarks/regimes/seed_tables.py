"""Per-seed and mean Markdown rows for the diagnosis scripts that score trained study runs on a split (test by default).

A script names its cells (leading table columns, the dataset, and what its ``measure`` needs) and a
``measure(dataset, seed, manifest, x, y, **cell) -> dict | None`` returning ``{variant: {"acc", "auc"}, "read": {...}}``;
``tabulate`` loads each dataset's split once, runs every seed, and formats both tables.
"""

from __future__ import annotations

import statistics
from typing import Callable

from run_regimes import DATASETS, load_arrays


def pair(acc: float, auc: float) -> str:
    """``ACC / AUC``, or ``-`` for a cell not run (NaN)."""
    return "-" if acc != acc else f"{acc:.3f} / {auc:.3f}"


def tabulate(cells: list[tuple[list[str], str, dict]], seeds: list[int], measure: Callable, variants: tuple, read: tuple, delta: tuple[str, str],
             split: str = "test") -> tuple[list[str], list[str]]:
    """Per-seed rows (leading columns, seed, each variant's ACC / AUC, each ``read`` statistic) and per-cell rows of
    means (leading columns, seeds, variants, ``delta[0]`` minus ``delta[1]`` in ACC points), scored on ``split`` of each
    dataset's manifest. Seeds ``measure`` skips (None) are left out."""
    import medmem

    rows, summary = [], []
    for lead, dataset, cell in cells:
        cfg = DATASETS[dataset]
        manifest = medmem.data.load_manifest(medmem.engine.resolve_manifest(dataset))
        x, y = load_arrays(dataset, split, None, cfg["image_size"], cfg["in_channels"])
        per_seed = {}
        for seed in seeds:
            results = measure(dataset, seed, manifest, x, y, **cell)
            if results is None:
                continue
            per_seed[seed] = results
            rows.append("| " + " | ".join(lead) + f" | {seed} | " + " | ".join(pair(results[v]["acc"], results[v]["auc"]) for v in variants)
                        + " | " + " | ".join(f"{results['read'][m]:.3f}" for m in read) + " |")  # fmt: skip
            print(rows[-1], flush=True)
        if per_seed:
            means = {v: [statistics.mean(r[v][m] for r in per_seed.values()) for m in ("acc", "auc")] for v in variants}
            summary.append("| " + " | ".join(lead) + f" | {len(per_seed)} | " + " | ".join(pair(a, b) for a, b in means.values())
                           + f" | {100 * (means[delta[0]][0] - means[delta[1]][0]):+.1f} |")  # fmt: skip
    return rows, summary


def markdown(title: str, made_by: list[str], lead: list[str], variants: tuple, read: tuple, summary: list[str], rows: list[str],
             delta: tuple[str, str], delta_header: str, read_note: str) -> str:
    """The report the diagnosis scripts write: a title, how it was made, the table of means (last column ``delta[0]``
    minus ``delta[1]``, headed ``delta_header``) and the per-seed table (``read`` columns explained by ``read_note``)."""
    header = "| " + " | ".join(lead) + " | {} | " + " | ".join(f"{v} ACC / AUC" for v in variants) + " |"
    rule = "|---" * (len(lead) + 1)
    lines = [
        f"# {title}", "", *made_by, "",
        f"Mean over seeds (last column: `{delta[0]}` minus `{delta[1]}`, ACC points):", "",
        header.format("n") + f" {delta_header} |", rule + "|---" * (len(variants) + 1) + "|", *summary, "",
        read_note, "",
        header.format("seed") + " " + " | ".join(read) + " |", rule + "|---" * (len(variants) + len(read)) + "|", *rows,
    ]  # fmt: skip
    return "\n".join(lines) + "\n"
