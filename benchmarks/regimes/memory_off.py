"""Does a trained memory ViT need its memory at test time, or did the memory only shape its weights?

    python benchmarks/regimes/memory_off.py --cells pneumoniamnist:movit_cs_ia:3 brain_tumor_mri_training:movit_cs_ia:1 \
        brain_tumor_mri_training:movit_cs:10 pneumoniamnist:movit_cs:30 pbc_blood_cells_96:movit_cs:30 --seeds 0 1 2

For each trained study run ``<network>_r<R>_s<seed>`` (seeds whose run folder is missing are skipped) and the plain
network of the same stem, recipe, regime and seed (``movit*`` -> ``vit*``), test ACC and macro AUC of:

- ``plain``: the plain ViT;
- ``full``: the memory ViT as trained (memory read in the attention, label vote fused into the output);
- ``no vote``: the memory read kept, the vote weight set to 0 (the head alone);
- ``memory off``: the memorising layer run as MONAI's plain ``SABlock`` (no read, no gate, no vote): the memory
  ViT's weights deployed as a plain ViT.

Where ``memory off`` keeps the memory ViT's lead over ``plain``, the memory helped by regularising training, and a
plain checkpoint would do at deployment; where it collapses, the weights rely on reading the memory.

How much the read moves the class token, on the first 256 images of the split scored (means): ``feature cos``, cosine between the
class-token features with the read and with ``memory off``; ``read / residual``, the norm of the change the read makes
to the memorising layer's class-token attention output, over the norm of the residual stream entering that block;
``attn / residual``, the same for the whole attention output with the memory off; ``gate``, the learned sigmoid gate
on the read (mean over heads; it starts at 0.5). Writes ``benchmarks/results/memory_off.md``. ``--split validation``
scores the validation split instead: where a user would choose between deploying the memory and switching it off.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from head_vs_vote import load  # noqa: E402
from run_regimes import DATASETS, NETWORKS, REPO, cell_finished, plain_counterpart, require_data_root, unit_features  # noqa: E402
from seed_tables import markdown, tabulate  # noqa: E402
from write_vs_train import evaluate  # noqa: E402

VARIANTS = ("plain", "full", "no vote", "memory off")
READ = ("feature cos", "read / residual", "attn / residual", "gate")


def measure(dataset: str, network: str, regime: int, seed: int, runs: Path, manifest: dict, x: torch.Tensor, y) -> dict | None:
    """ACC and AUC of the four variants for one seed, or None when either trained run is missing or unfinished."""
    c = len(manifest["classes"])
    plain_network = plain_counterpart(network)
    memory_run, plain_run = (runs / dataset / f"{n}_r{regime}_s{seed}" for n in (network, plain_network))
    if not all(cell_finished(dataset, n, regime, seed, runs, manifest) for n in (network, plain_network)):
        print(f"skip {dataset} {network} r{regime} s{seed}: {memory_run} or {plain_run} is not trained", file=sys.stderr)
        return None
    results = {"plain": evaluate(load(dataset, plain_network, plain_run, c), x, y, c)}
    net = load(dataset, network, memory_run, c)
    results["full"] = evaluate(net, x, y, c)
    vote = net.memory_vote
    net.set_memory_vote(0.0)
    results["no vote"] = evaluate(net, x, y, c)
    net.set_memory_vote(vote)
    net.set_memory_mode("off")
    results["memory off"] = evaluate(net, x, y, c)
    net.set_memory_mode("full")
    results["read"] = read_size(net, x[:256])
    return results


def read_size(net, x: torch.Tensor) -> dict:
    """How far the memory read moves the class token of images (N, C, H, W); see the module docstring."""
    layer = net.memory_layers()[0]
    block = next(b for b in net.blocks if b.attn is layer)
    seen: dict = {}
    hooks = [block.register_forward_pre_hook(lambda m, a: seen.__setitem__("residual", a[0][:, 0])),
             layer.register_forward_hook(lambda m, a, out: seen.__setitem__("attn", out[:, 0]))]  # fmt: skip
    with torch.no_grad():
        with_read = torch.as_tensor(unit_features(net, x))
        residual, attn_read = seen["residual"], seen["attn"]
        net.set_memory_mode("off")
        without = torch.as_tensor(unit_features(net, x))
        attn_off = seen["attn"]
    net.set_memory_mode("full")
    for h in hooks:
        h.remove()
    norm = lambda t: t.norm(dim=-1)  # noqa: E731
    return {
        "feature cos": float((with_read * without).sum(-1).mean()),
        "read / residual": float((norm(attn_read - attn_off) / norm(residual)).mean()),
        "attn / residual": float((norm(attn_off) / norm(residual)).mean()),
        "gate": float(torch.sigmoid(layer.gate_logit).mean()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="+", required=True, help="dataset:network:regime, network a full-memory driver network")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--runs", default=str(REPO / "runs" / "regimes"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "memory_off.md"))
    # validation: the split a user can choose the deployment mode on (full, or the memory switched off) without the test
    p.add_argument("--split", default="test", choices=("test", "validation"))
    args = p.parse_args()
    require_data_root()
    from medmem.atomic import write_text_atomic

    torch.set_num_threads(1)
    cells = []
    for cell in args.cells:
        dataset, network, regime = cell.split(":")
        if dataset not in DATASETS or NETWORKS.get(network, {}).get("memory_mode") != "full":
            sys.exit(f"{cell}: expected dataset:network:regime with a known dataset and a full-memory network")
        cells.append(([dataset, network, regime], dataset, {"network": network, "regime": int(regime)}))
    runs = Path(args.runs)
    rows, summary = tabulate(cells, args.seeds, lambda d, seed, m, x, y, network, regime: measure(d, network, regime, seed, runs, m, x, y),
                             VARIANTS, READ, ("memory off", "plain"), args.split)  # fmt: skip
    # a file other than the default names itself, so that the command rewrites it and not memory_off.md
    out, default = Path(args.out).resolve(), (REPO / "benchmarks" / "results" / "memory_off.md").resolve()
    shown = out.relative_to(REPO) if out.is_relative_to(REPO) else out
    to = ("" if out == default else f" --out {shown}") + ("" if args.split == "test" else f" --split {args.split}")
    made_by = [
        f"Made by `python benchmarks/regimes/memory_off.py --cells {' '.join(args.cells)} --seeds {' '.join(map(str, args.seeds))}{to}`",
        f"(machine: {platform.machine()}, 2 CPU cores, torch {torch.__version__}) on the study's trained runs; {args.split} split.",
        "`plain`: the plain ViT of the same stem, recipe, regime and seed; `full`: the memory ViT as trained; `no vote`: its vote",
        "weight set to 0 (memory read kept); `memory off`: the memorising layer run as a plain self-attention block.",
    ]
    text = markdown("Does the memory ViT need its memory at test time?", made_by, ["dataset", "network", "regime %"], VARIANTS, READ, summary, rows,
                    ("memory off", "plain"), "off − plain", "Per seed (the last four columns: how far the read moves the class token, see the script's docstring):")
    write_text_atomic(text, Path(args.out))


if __name__ == "__main__":
    main()
