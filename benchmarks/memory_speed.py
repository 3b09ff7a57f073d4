"""Speed of the memory: kNN backends, training step and inference by memory mode and memory size.

    python benchmarks/memory_speed.py --out benchmarks/results/memory_speed.json

Prints a Markdown report (also written beside the JSON). Timings are medians over ``--repeats``
runs after two warm-up runs, with the min-max spread; the model is the default MemoryViT (64 px,
patch 8, width 192, depth 6, 3 heads, 65 tokens), batch 64 for training, 128 for inference, with the
memory design of ``--design``: ``chosen`` (the bundle default: the class token retrieves other images'
class tokens by key and votes with their labels) or ``first`` (query-key retrieval over every stored
token, no vote). The memory is filled with random keys/values and labels (speed does not depend on
their content); ``--sizes`` counts entries per head (stored images x 65 tokens).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from medmem.atomic import write_json_atomic, write_text_atomic
from medmem.memory.editing import refresh_layer_prototypes
from medmem.memory.knn import knn_search
from medmem.networks import MemoryViT

DESIGNS = {
    "chosen": {"memory_match": "same_token", "memory_retrieval": "key", "memory_vote": 0.5},
    "first": {"memory_match": "any", "memory_retrieval": "query", "memory_vote": 0.0},
}


def timed(fn, repeats: int) -> dict:
    for _ in range(2):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return {"median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples), "repeats": repeats}


def fill(model: MemoryViT, entries: int) -> None:
    """Write random keys/values until each memorising layer holds about ``entries`` entries per head."""
    g = torch.Generator().manual_seed(0)
    for layer in model.memory_layers():
        mem = layer.memory
        samples, chunk = max(1, entries // mem.tokens), 512
        for start in range(0, samples, chunk):
            n = min(chunk, samples - start)
            kv = torch.randn(n, mem.num_heads, mem.tokens, mem.head_dim, generator=g)
            mem.write(kv, kv, torch.arange(start, start + n), torch.randint(0, 8, (n,), generator=g))


def bench_knn(repeats: int) -> list[dict]:
    rows = []
    g = torch.Generator().manual_seed(0)
    for queries in (64, 4160):  # class token of a batch of 64, or every token of it
        q = F.normalize(torch.randn(queries, 64, generator=g), dim=-1)
        for n in (2_000, 5_000, 10_000, 20_000, 50_000, 100_000):
            keys = F.normalize(torch.randn(n, 64, generator=g), dim=-1)
            for backend in ("torch", "faiss"):
                t = timed(lambda: knn_search(q, keys, 32, backend), repeats)
                rows.append({"queries": queries, "entries": n, "backend": backend, **t})
    return rows


def bench_model(repeats: int, sizes: list[int], design: dict) -> list[dict]:
    rows = []
    x_train, y_train = torch.randn(64, 3, 64, 64), torch.randint(0, 8, (64,))
    x_infer = torch.randn(128, 3, 64, 64)
    for mode, queries in (("off", "cls"), ("full", "cls"), ("full", "all")):
        for entries in sizes if mode == "full" else [0]:
            if queries == "all" and (entries > 100_000 or design["memory_match"] == "same_token"):
                continue  # minutes per step on this CPU; the chosen design reads with the class token only
            torch.manual_seed(0)
            model = MemoryViT(3, 64, 8, 8, memory_mode=mode, memory_queries=queries, **design)
            fill(model, entries) if mode == "full" else None
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            base = model.memory_size()
            ids = torch.arange(64) + base + 10  # new samples: the memory grows a little per step (as in epoch 1)

            def step():
                model.train()
                loss = F.cross_entropy(model(x_train, ids), y_train)
                opt.zero_grad()
                loss.backward()
                opt.step()
                model.commit_memory(ids)

            t = timed(step, repeats)
            rows.append({"what": "train_step", "mode": mode, "queries": queries, "entries": entries, "batch": 64, **t})
            model.eval()
            with torch.no_grad():
                t = timed(lambda: model(x_infer), repeats)
            rows.append({"what": "inference", "mode": mode, "queries": queries, "entries": entries, "batch": 128, **t})
    model = MemoryViT(3, 64, 8, 8, memory_mode="prototypes", num_prototypes=256, **design).eval()
    with torch.no_grad():
        t = timed(lambda: model(x_infer), repeats)
    rows.append({"what": "inference", "mode": "prototypes", "queries": "cls", "entries": 256, "batch": 128, **t})
    return rows


def bench_memory_read(repeats: int, sizes: list[int], design: dict) -> list[dict]:
    """The memorising attention block alone (batch of 128 token sequences): full memory against 256
    prototypes per head, the read that prototype summarisation replaces."""
    rows = []
    x = torch.randn(128, 65, 192)
    for entries in sizes:
        torch.manual_seed(0)
        model = MemoryViT(3, 64, 8, 8, memory_mode="full", num_prototypes=256, **design).eval()
        fill(model, entries)
        block = model.memory_layers()[0]
        # prototypes as the summarise step would leave them (k-means of the stored keys, with label mix)
        refresh_layer_prototypes(block, "kmeans")
        with torch.no_grad():
            full = timed(lambda: block(x), repeats)
            block.mode = "prototypes"
            proto = timed(lambda: block(x), repeats)
            block.mode = "off"
            plain = timed(lambda: block(x), repeats)
        rows.append({"entries": entries, "full": full, "prototypes": proto, "off": plain})
    return rows


def report(result: dict) -> str:
    lines = [
        "# Memory speed",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}; torch {result['torch']}, {result['threads']} threads. Medians of {result['repeats']} runs (min-max).",
        f"Memory design: `{result.get('design', 'first')}` {json.dumps(DESIGNS[result.get('design', 'first')])}.",
        "",
        "## kNN search, top-32, dim 64",
        "",
        "| queries | entries | torch s | faiss s |",
        "|---|---|---|---|",
    ]
    knn = result["knn"]
    for q in sorted({r["queries"] for r in knn}):
        for n in sorted({r["entries"] for r in knn}):
            t, f = (next(r for r in knn if r["queries"] == q and r["entries"] == n and r["backend"] == b) for b in ("torch", "faiss"))
            lines.append(f"| {q} | {n} | {t['median_s']:.4f} ({t['min_s']:.4f}-{t['max_s']:.4f}) | {f['median_s']:.4f} ({f['min_s']:.4f}-{f['max_s']:.4f}) |")
    lines += ["", "## Model (training step: batch 64; inference: batch 128)", "", "| what | mode | queries | memory entries / head | median s | min-max s |", "|---|---|---|---|---|---|"]
    for r in result["model"]:
        lines.append(f"| {r['what']} | {r['mode']} | {r['queries']} | {r['entries']} | {r['median_s']:.3f} | {r['min_s']:.3f}-{r['max_s']:.3f} |")
    if result.get("memory_read"):
        lines += [
            "",
            "## The memorising block alone (128 sequences of 65 tokens, class-token reads)",
            "",
            "| memory entries / head (images) | full memory s | 256 prototypes s | no memory s | full / prototypes | memory read: full / prototypes |",
            "|---|---|---|---|---|---|",
        ]
        for r in result["memory_read"]:
            f, p, o = r["full"]["median_s"], r["prototypes"]["median_s"], r["off"]["median_s"]
            read = (f - o) / max(p - o, 1e-9)
            lines.append(f"| {r['entries']} ({r['entries'] // 65}) | {f:.4f} | {p:.4f} | {o:.4f} | {f / p:.1f}x | {read:.1f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/memory_speed.json")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--skip-knn", action="store_true")
    p.add_argument("--skip-model", action="store_true")
    p.add_argument("--design", default="chosen", choices=sorted(DESIGNS))
    args = p.parse_args()
    import sys

    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, {platform.platform()}",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "design": args.design,
        "knn": [] if args.skip_knn else bench_knn(args.repeats),
        "model": [] if args.skip_model else bench_model(args.repeats, args.sizes, DESIGNS[args.design]),
        "memory_read": bench_memory_read(args.repeats, args.sizes, DESIGNS[args.design]),
    }
    write_json_atomic(result, args.out)
    text = report(result)
    write_text_atomic(text, Path(args.out).with_suffix(".md"))
    print(text)


if __name__ == "__main__":
    main()
