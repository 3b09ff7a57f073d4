"""Is the trained memory stale? Rewrite it with the final network, with and without augmented views.

    python benchmarks/regimes/memory_refresh.py --dataset pneumoniamnist --network movit_cs_ia --regimes 3 --seeds 0 1 2 --views 4

During training each memory row is a moving average (ATMA, momentum 0.9) of the keys and values its image
gave under random augmentation, computed by the network as it was at each epoch: at the end of training the
rows are averages over older weights and augmented copies. For each trained study run
``<network>_r<R>_s<seed>`` this script measures, on the test split (and validation ACC, to choose on):

- ``trained``: the memory as saved with the selected checkpoint;
- ``refreshed``: the memory cleared and rewritten from the regime's training images through the evaluation
  transforms by the final network (same ids and labels), with no gradient step;
- ``views``: ``refreshed`` plus ``--views`` augmented copies of every training image, each its own row
  (the run's own training augmentation: right-angle turns per dataset, intensity jitter for ``*_ia`` networks).

``key_cosine``: mean cosine between each row's trained key and its refreshed key (1 = not stale), over heads and rows;
``view_cosine``: between a refreshed key and the keys of its own augmented views; ``other_cosine``: between the
refreshed keys of two different training images (the scale the other two are read against).
Rows go to ``benchmarks/results/memory_refresh.csv`` (and ``.md``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_regimes import DATASETS, NETWORKS, REPO, build, load_arrays, read_rows, require_data_root  # noqa: E402
from write_vs_train import evaluate  # noqa: E402

COLUMNS = ["dataset", "network", "regime", "seed", "rows", "views", "key_cosine", "view_cosine", "other_cosine", "val_acc_trained", "val_acc_refreshed", "val_acc_views",
           "acc_trained", "acc_refreshed", "acc_views", "auc_trained", "auc_refreshed", "auc_views"]  # fmt: skip
VIEW_ID_STRIDE = 10_000_000  # view v of sample s is written as s + v * stride: every copy its own row


def write_images(net, images: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> None:
    """Write (N, C, H, W) images into ``net``'s memory in batches (no gradient step)."""
    for i in range(0, len(images), batch):
        net.write_memory(images[i : i + batch], ids[i : i + batch], labels[i : i + batch])


def key_cosine(trained: torch.Tensor, refreshed: torch.Tensor) -> float:
    """Mean cosine of matching rows of two (H, N, Dh) key sets, both L2-normalised by the store."""
    return float((trained.float() * refreshed.float()).sum(-1).mean())


def measure(dataset: str, network: str, regime: int, seed: int, views: int, runs: Path, tensors: dict) -> dict:
    import medmem

    cfg, c = DATASETS[dataset], tensors["classes"]
    net = build(dataset, network, c)
    net.load_state_dict(
        torch.load(
            runs / dataset / f"{network}_r{regime}_s{seed}" / "models" / "model_full.pt", map_location="cpu", weights_only=True
        )
    )
    memory = net.memory_layers()[0].memory
    items = medmem.data.load_datalist(medmem.engine.resolve_manifest(dataset), "training", None, regime)
    ids = torch.tensor([d["sample_id"] for d in items])
    labels = torch.tensor([d["label"] for d in items])
    if set(ids.tolist()) != set(memory.sample_ids().tolist()):
        raise RuntimeError(
            f"{dataset} {network} r{regime} s{seed}: the memory does not hold exactly the regime's training images"
        )
    xte, yte, xva, yva = tensors["xte"], tensors["yte"], tensors["xva"], tensors["yva"]
    row = {"dataset": dataset, "network": network, "regime": regime, "seed": seed, "rows": len(items), "views": views}
    row["val_acc_trained"], trained = evaluate(net, xva, yva, c)["acc"], evaluate(net, xte, yte, c)
    old_keys = memory.token_keys(0, ids).clone()

    clean, _ = load_arrays(dataset, "training", regime, cfg["image_size"], cfg["in_channels"])  # same datalist order as ``items``
    for layer in net.memory_layers():
        layer.memory.clear()
    write_images(net, clean, ids, labels)
    fresh_keys = memory.token_keys(0, ids).clone()
    row["key_cosine"] = round(key_cosine(old_keys, fresh_keys), 4)
    gram = torch.einsum("hnd,hmd->hnm", fresh_keys.float(), fresh_keys.float())
    n = len(items)
    row["other_cosine"] = round(float((gram.sum((-1, -2)) - gram.diagonal(dim1=-2, dim2=-1).sum(-1)).mean() / (n * (n - 1))), 4)
    row["val_acc_refreshed"], refreshed = evaluate(net, xva, yva, c)["acc"], evaluate(net, xte, yte, c)

    intensity = bool(NETWORKS[network].get("intensity_augment", False))
    chain = medmem.data.train_transforms(cfg["image_size"], cfg["in_channels"], rotate90=cfg["rotate90"], intensity=intensity)
    chain.set_random_state(seed)
    for v in range(1, views + 1):
        augmented = torch.stack([torch.as_tensor(chain({"image": d["image"]})["image"]) for d in items])
        write_images(net, augmented, ids + v * VIEW_ID_STRIDE, labels)
    if views:
        view_keys = [memory.token_keys(0, ids + v * VIEW_ID_STRIDE) for v in range(1, views + 1)]
        row["view_cosine"] = round(sum(key_cosine(fresh_keys, k) for k in view_keys) / views, 4)
    row["val_acc_views"], with_views = evaluate(net, xva, yva, c)["acc"], evaluate(net, xte, yte, c)
    for name, m in (("trained", trained), ("refreshed", refreshed), ("views", with_views)):
        row[f"acc_{name}"], row[f"auc_{name}"] = m["acc"], m["auc"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    p.add_argument("--network", default="movit_cs", choices=[n for n, o in NETWORKS.items() if o["memory_mode"] == "full"])
    p.add_argument("--regimes", nargs="+", type=int, required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--views", type=int, default=4, help="augmented copies of each training image written after the refresh")
    p.add_argument("--runs", default=str(REPO / "runs" / "regimes"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "memory_refresh.csv"))
    args = p.parse_args()
    require_data_root()
    import medmem

    torch.set_num_threads(1)
    cfg = DATASETS[args.dataset]
    tensors = {"classes": len(medmem.data.load_manifest(medmem.engine.resolve_manifest(args.dataset))["classes"])}
    tensors["xte"], tensors["yte"] = load_arrays(args.dataset, "test", None, cfg["image_size"], cfg["in_channels"])
    tensors["xva"], tensors["yva"] = load_arrays(args.dataset, "validation", None, cfg["image_size"], cfg["in_channels"])
    for regime in args.regimes:
        for seed in args.seeds:
            row = measure(args.dataset, args.network, regime, seed, args.views, Path(args.runs), tensors)
            print(row, flush=True)
            write_row(Path(args.out), row)
    write_markdown(Path(args.out))


def write_row(path: Path, row: dict) -> None:
    """Replace the row of the same (dataset, network, regime, seed, views), atomically."""
    import csv

    from medmem.atomic import atomic_path

    key = lambda r: (r["dataset"], r["network"], str(r["regime"]), str(r["seed"]), str(r["views"]))  # noqa: E731
    rows = [r for r in read_rows(path) if key(r) != key(row)] + [row]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def write_markdown(path: Path) -> None:
    """``<csv>.md``: the rows, then the mean change per (dataset, network, regime) over seeds."""
    import platform
    import statistics

    from medmem.atomic import write_text_atomic

    rows = read_rows(path)
    f = lambda v: f"{float(v):.3f}"  # noqa: E731
    lines = [
        "# Memory refresh after training",
        "",
        "Made by `python benchmarks/regimes/memory_refresh.py --dataset D --network N --regimes R --seeds S --views V`",
        f"(machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}). `trained`: the memory saved with the",
        "selected checkpoint (ATMA averages over epochs and augmented copies); `refreshed`: cleared and rewritten from the clean",
        "training images by the final network; `views`: refreshed plus V augmented copies per image. `key cos`: mean cosine",
        "between a row's trained and refreshed key; `view cos`: between a refreshed key and its own augmented views' keys;",
        "`other cos`: between two different images' refreshed keys. Test ACC / AUC; validation ACC in brackets.",
        "",
        "| dataset | network | regime % | seed | rows | views | key cos | view cos | other cos | trained | refreshed | views |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{f(r[f'acc_{n}'])} / {f(r[f'auc_{n}'])} ({f(r[f'val_acc_{n}'])})" for n in ("trained", "refreshed", "views")]
        lines.append(
            f"| {r['dataset']} | {r['network']} | {r['regime']} | {r['seed']} | {r['rows']} | {r['views']} | {r['key_cosine']} | {r.get('view_cosine') or '-'} | {r.get('other_cosine') or '-'} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        "Mean change against `trained`, test ACC points (per seed):",
        "",
        "| dataset | network | regime % | views | refreshed | views |",
        "|---|---|---|---|---|---|",
    ]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["network"], r["regime"], r["views"]), []).append(r)
    for (d, n, reg, v), rs in sorted(groups.items()):
        cell = []
        for name in ("refreshed", "views"):
            deltas = [100 * (float(r[f"acc_{name}"]) - float(r["acc_trained"])) for r in rs]
            cell.append(f"{statistics.mean(deltas):+.1f} ({', '.join(f'{x:+.1f}' for x in deltas)})")
        lines.append(f"| {d} | {n} | {reg} | {v} | " + " | ".join(cell) + " |")
    write_text_atomic("\n".join(lines) + "\n", path.with_suffix(".md"))


if __name__ == "__main__":
    main()
