"""What a trained memory does: retrieval quality, gate and reliance, on the validation split.

    python benchmarks/regimes/diagnose_memory.py runs/regimes/pbc_blood_cells_96/movit_cs_r3_s0

The run directory names the dataset (its parent) and the driver network (``<network>_r<R>_s<S>``, as
``run_regimes.py`` makes them); the network is rebuilt exactly as the study built it (``run_regimes.build``).
For each validation image, the class token's top-k memory neighbours (full memory) are looked up:
reports the attention-weighted share of neighbours whose training label equals the image's label
("neighbour label purity"), the accuracy of a vote by those neighbours, the model's accuracy, the
learned gates, and the memory's share of the class token's attention output (reliance).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import medmem
from medmem.atomic import write_json_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_regimes import DATASETS, NETWORKS, build  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="runs/regimes/<dataset>/<network>_r<R>_s<S>")
    args = p.parse_args()
    run = Path(args.run_dir)
    dataset, network = run.parent.name, run.name.rsplit("_r", 1)[0]
    if dataset not in DATASETS or network not in NETWORKS or NETWORKS[network]["memory_mode"] != "full":
        sys.exit(f"{run}: expected runs/regimes/<dataset>/<memory network>_r<R>_s<S> as run_regimes.py names them")
    manifest = medmem.data.load_manifest(medmem.engine.resolve_manifest(dataset))
    n_classes = len(manifest["classes"])
    net = build(dataset, network, n_classes)
    net.load_state_dict(torch.load(Path(args.run_dir) / "models" / "model_full.pt", map_location="cpu", weights_only=True))
    net.eval()
    layer = net.memory_layers()[-1]
    layer.record_evidence = True
    train_labels = torch.tensor([e["label"] for e in manifest["training"]])
    items = medmem.data.load_datalist(manifest, "validation", None)
    chain = medmem.data.eval_transforms(DATASETS[dataset]["image_size"], DATASETS[dataset]["in_channels"])
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
    main()
