"""Which augmentation did each committed study row really train with? (the 'false'-read-as-true bug, session 13)

    python benchmarks/regimes/recipe_audit.py

Until bundle 0.3.3 the bundle read ``--rotate90 false`` and ``--intensity_augment false`` (the text the command line
hands it) as true. ``run_regimes.py`` passed ``rotate90 false`` for PneumoniaMNIST and brain MRI from the start, and
``intensity_augment false`` for every network not named ``*_ia`` from commit 9c6700d (session 9, when the bundle's
default became true). So:

- every trained row had right-angle turns, the grayscale sets included;
- a row named as geometry-only was trained with the gamma/colour jitter if its run passed ``intensity_augment`` at all.

For each trained row (``epochs`` > 0) of the committed results, the commit that added it (``git blame``) dates it:
``before`` 9c6700d (the driver passed no jitter setting, the bundle's default was off), ``between`` it and the fix
a2bcd69 (every run passed the text, and had the jitter), or ``fixed`` (the recipe its name says). Two commits hold runs
trained earlier than their commit says (``TRAINED_BEFORE_SWITCH``, ``TRAINED_BEFORE_FIX``); a training call of the
session-9 lanes in the 7 minutes between 9c6700d and their commit could have read the new default. What the run logs
still on disk passed (``runs/regimes/<dataset>/<network>_r<R>_s<seed>.log``, the bundle's input summary) is shown
as evidence. Writes ``benchmarks/results/recipe_audit.md``.
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_regimes import NETWORKS, REPO, RESULT_FILES, knn_plain_network  # noqa: E402

# the study's files, session 14's retrained cells (kept apart: their keys repeat rows of regimes_conv_stem.csv) and the
# seeds beyond 0-2 of session 25 (kept apart so that case_vote.csv compares models over the same seeds)
AUDITED_FILES = (*RESULT_FILES, "case_vote.csv", "more_seeds.csv", "second_trunk.csv")

SWITCH = "9c6700d"  # the commit from which run_regimes passed intensity_augment false to every network not named *_ia
# rows committed after SWITCH but trained before it: session 9's 1% lanes ran for hours before 9c6700d (09:03 UTC) and were
# committed 7 minutes after it; all later rows come from lanes started after it
TRAINED_BEFORE_SWITCH = ("6e0f881",)
FIX = "a2bcd69"  # bundle 0.3.3 reads the text 'false' as false: from here a row trains with the recipe its name says
# rows committed after FIX but trained by lanes started before it (LC25000 10% seed 2)
TRAINED_BEFORE_FIX = ("99dd062",)


def row_commits(path: Path) -> list[str]:
    """The commit that added each data line of a results CSV (``git blame`` of the working file; all zeros: not committed
    yet), in file order."""
    out = subprocess.run(["git", "blame", "--line-porcelain", "--", str(path)], cwd=REPO, capture_output=True, text=True, check=True).stdout
    commits = [line.split()[0] for line in out.splitlines() if re.match(r"^[0-9a-f]{40} \d+ \d+", line)]
    return commits[1:]  # the header line


def is_after(commit: str, ancestor: str, cache: dict) -> bool:
    if set(commit) == {"0"}:
        return True  # a row not committed yet comes from the current code
    if (commit, ancestor) not in cache:
        cache[(commit, ancestor)] = subprocess.run(["git", "merge-base", "--is-ancestor", ancestor, commit], cwd=REPO).returncode == 0
    return cache[(commit, ancestor)]


def period(commit: str, cache: dict) -> str:
    """``before`` 9c6700d (the driver passed no jitter setting; the bundle default was off), ``between`` it and the fix
    (the text 'false' switched the jitter on), or ``fixed`` (the row trained with the recipe its name says)."""
    if commit.startswith(TRAINED_BEFORE_SWITCH) or not is_after(commit, SWITCH, cache):
        return "before"
    if commit.startswith(TRAINED_BEFORE_FIX) or not is_after(commit, FIX, cache):
        return "between"
    return "fixed"


def logged_recipe(log: Path) -> str | None:
    """'turns <value>, jitter <value>' as the first bundle call of the run passed them (None without a log)."""
    if not log.exists():
        return None
    text = log.read_text(errors="replace")
    rot = re.search(r"> rotate90: (.*)", text)
    jit = re.search(r"> intensity_augment: (.*)", text)
    return f"rotate90 {rot.group(1).strip() if rot else '(not passed)'}, intensity_augment {jit.group(1).strip() if jit else '(not passed)'}"


def audit(runs: Path) -> dict[tuple, dict]:
    """Per trained cell (results file, dataset, model, regime): seeds, what the logs say, rows per period (see
    :func:`period`), and ``jitter``: ``yes``, ``no`` or ``mixed``."""
    cache: dict = {}
    cells: dict[tuple, list[tuple[str, str]]] = defaultdict(list)
    for name in AUDITED_FILES:
        path = REPO / "benchmarks" / "results" / name
        rows = list(csv.DictReader(open(path)))
        for row, commit in zip(rows, row_commits(path)):
            if row["epochs"] == "0":
                continue  # k-NN and logreg rows train nothing
            network = row["model"].removesuffix("_proto")
            log = runs / row["dataset"] / f"{network}_r{row['regime']}_s{row['seed']}.log"
            cells[(name, row["dataset"], row["model"], int(row["regime"]))].append((logged_recipe(log) or "no log", period(commit, cache)))
    out = {}
    for key, found in cells.items():
        named = "_ia" in key[2]
        # between the switch and the fix every run passed the setting as text, which switched the jitter on
        jittered = [named or when == "between" for _, when in found]
        verdict = "yes" if all(jittered) else "no" if not any(jittered) else "mixed"
        counts = {w: sum(when == w for _, when in found) for w in ("before", "between", "fixed")}
        out[key] = {"seeds": len(found), "logs": "; ".join(sorted({r for r, _ in found})), **counts, "jitter": verdict}
    return out


def rerun_as(model: str) -> str:
    """The driver model that reproduces a jittered row named as unjittered (``-`` if the driver has none)."""
    name = "resnet18_ia" if model == "resnet18" else model.replace("vit_cs", "vit_cs_ia", 1)
    trained = knn_plain_network(name) or name.removesuffix("_proto")
    return f"`{name}`" if trained in NETWORKS else "-"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default=str(REPO / "runs" / "regimes"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "recipe_audit.md"))
    args = p.parse_args()
    from medmem.atomic import write_text_atomic

    lines = [
        "# Which augmentation each committed study row trained with",
        "",
        "Made by `python benchmarks/regimes/recipe_audit.py` (see its docstring). Until bundle 0.3.3 (commit a2bcd69) the text `false`",
        "was read as true: every row below was trained with right-angle turns, and every row trained between commit 9c6700d and",
        "the fix, when the driver passed `intensity_augment` to every network, had the gamma/colour jitter, whatever its name.",
        "Rows from before 9c6700d whose logs are gone are dated by their commit; one commit just after it holds runs trained",
        "before it (`TRAINED_BEFORE_SWITCH` in the script), so their `no` rests on the lanes' timing.",
        "",
        "To rerun a row that had the jitter though its name says otherwise, run the driver model in the last column.",
        "",
        "| results file | dataset | model | regime % | seeds | what the run logs say | rows before 9c6700d / between / after the fix | jitter | rerun as |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (name, dataset, model, regime), a in sorted(audit(Path(args.runs)).items()):
        lines.append(f"| {name} | {dataset} | {model} | {regime} | {a['seeds']} | {a['logs']} | {a['before']} / {a['between']} / {a['fixed']} | {a['jitter']} | "
                     f"{rerun_as(model) if a['jitter'] == 'yes' and '_ia' not in model else ''} |")
    write_text_atomic("\n".join(lines) + "\n", Path(args.out))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
