"""What a trained memory does: retrieval quality, gate and reliance, on the validation split.

    python benchmarks/regimes/diagnose_memory.py runs/regimes/pbc_blood_cells_96/movit_r3_s0 --dataset pbc_blood_cells_96

For each validation image, the class token's top-k memory neighbours (full memory) are looked up:
reports the attention-weighted share of neighbours whose training label equals the image's label
("neighbour label purity"), the accuracy of a vote by those neighbours, the model's accuracy, the
learned gates, and the memory's share of the class token's attention output (reliance).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

import medmem
from medmem.atomic import write_json_atomic


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--dataset", required=True)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--memory-labels", action="store_true")
    p.add_argument("--memory-match", default="any", choices=["any", "same_token"])
    p.add_argument("--memory-retrieval", default="query", choices=["query", "key"])
    p.add_argument("--memory-vote", type=float, default=0.0)
    args = p.parse_args()
    manifest = medmem.data.load_manifest(medmem.engine.resolve_manifest(args.dataset))
    n_classes = len(manifest["classes"])
    net = medmem.networks.MemoryViT(args.in_channels, args.image_size, args.patch_size, n_classes, dropout_rate=0.1, memory_labels=args.memory_labels,
        memory_match=args.memory_match, memory_retrieval=args.memory_retrieval, memory_vote=args.memory_vote,
    )  # fmt: skip
    net.load_state_dict(torch.load(Path(args.run_dir) / "models" / "model_full.pt", map_location="cpu", weights_only=True))
    net.eval()
    layer = net.memory_layers()[-1]
    layer.record_evidence = True
    train_labels = torch.tensor([e["label"] for e in manifest["training"]])
    items = medmem.data.load_datalist(manifest, "validation", None)
    chain = medmem.data.eval_transforms(args.image_size, args.in_channels)
    purity, vote_ok, model_ok, reliance, n = 0.0, 0, 0, 0.0, 0
    with torch.no_grad():
        for start in range(0, len(items), 128):
            chunk = items[start : start + 128]
            x = torch.stack([chain({"image": d["image"]})["image"] for d in chunk])
            y = torch.tensor([d["label"] for d in chunk])
            logits = net(x)
            ev = layer.evidence
            w, owners = ev["weights"], ev["sample_ids"][..., 0]  # (B, H, k)
            labels = train_labels[owners.clamp(min=0)]
            same = (labels == y[:, None, None]).float() * (owners >= 0)
            purity += float(((w * same).sum((1, 2)) / w.sum((1, 2)).clamp(min=1e-12)).sum())
            votes = torch.zeros(len(chunk), n_classes).scatter_add_(1, labels.flatten(1), w.flatten(1))
            vote_ok += int((votes.argmax(1) == y).sum())
            model_ok += int((logits.argmax(1) == y).sum())
            reliance += float(ev["reliance"].sum())
            n += len(chunk)
    result = {
        "run": str(args.run_dir),
        "validation_images": n,
        "memory_samples": net.memory_size(),
        "neighbour_label_purity": purity / n,
        "neighbour_vote_accuracy": vote_ok / n,
        "model_accuracy": model_ok / n,
        "mean_memory_reliance": reliance / n,
        "gates": torch.sigmoid(layer.gate_logit).tolist(),
        "temperatures": layer.log_tau.exp().tolist(),
    }
    write_json_atomic(result, Path(args.run_dir) / "memory_diagnosis.json")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
