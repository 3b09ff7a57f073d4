"""Would centering the memory's keys make its neighbours purer? (SimpleShot's fix for a shared direction.)

    python benchmarks/regimes/key_centering.py --dataset pneumoniamnist --network movit_cs_ia --regime 3 --seeds 0 1 2

On PneumoniaMNIST the class-token keys of two different training images have a mean cosine of 0.69-0.81
(``memory_refresh.py``, ``other_cosine``): a direction every image shares. This script takes each trained run's memory keys (H, N, Dh) and the test images'
class-token keys from the memorising layer, and scores the neighbours' label vote (top-k by cosine, unweighted,
averaged over heads) with the raw keys and with keys centred on the memory's mean key and re-normalised.
Prints, per seed and k: test ACC of the vote and its purity (the vote's share for the true class). Reads only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_regimes import DATASETS, NETWORKS, REPO, build, load_arrays, require_data_root  # noqa: E402


def test_keys(net, x: torch.Tensor) -> torch.Tensor:
    """Normalised class-token keys (B, H, Dh) of the first memorising layer for images (B, C, H, W)."""
    layer, found = net.memory_layers()[0], []
    hook = layer.qkv.register_forward_hook(lambda m, i, o: found.append(layer.input_rearrange(o)[1][:, :, 0].detach()))
    net.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(x), 256):
                net(x[i : i + 256])
    finally:
        hook.remove()
    return F.normalize(torch.cat(found), dim=-1)


def vote_scores(
    queries: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, y: torch.Tensor, k: int, classes: int
) -> tuple[float, float]:
    """(ACC, purity) of the top-k label vote; queries (B, H, Dh), keys (H, N, Dh), labels (N,), y (B,)."""
    top = torch.einsum("bhd,hnd->bhn", queries, keys).topk(min(k, keys.shape[1]), dim=-1).indices
    vote = F.one_hot(labels, classes).float()[top].mean(2).mean(1)  # (B, C)
    return float((vote.argmax(-1) == y).float().mean()), float(vote[torch.arange(len(y)), y].mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    p.add_argument("--network", default="movit_cs", choices=[n for n, o in NETWORKS.items() if o["memory_mode"] == "full"])
    p.add_argument("--regime", type=int, required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--k", nargs="+", type=int, default=[8, 32])
    p.add_argument("--runs", default=str(REPO / "runs" / "regimes"))
    args = p.parse_args()
    require_data_root()
    import medmem

    torch.set_num_threads(1)
    cfg = DATASETS[args.dataset]
    classes = len(medmem.data.load_manifest(medmem.engine.resolve_manifest(args.dataset))["classes"])
    xte, yte = load_arrays(args.dataset, "test", None, cfg["image_size"], cfg["in_channels"])
    yte = torch.as_tensor(yte)
    print("| seed | k | raw ACC / purity | centred ACC / purity |\n|---|---|---|---|")
    for seed in args.seeds:
        net = build(args.dataset, args.network, classes)
        run = Path(args.runs) / args.dataset / f"{args.network}_r{args.regime}_s{seed}" / "models" / "model_full.pt"
        net.load_state_dict(torch.load(run, map_location="cpu", weights_only=True))
        memory = net.memory_layers()[0].memory
        n = memory.num_written
        keys, labels = memory.token_keys(0).float(), memory.row_labels[:n]  # class-token key of each row
        queries = test_keys(net, xte)
        mean = keys.mean(1)  # (H, Dh)
        centred_keys, centred_queries = F.normalize(keys - mean[:, None], dim=-1), F.normalize(queries - mean[None], dim=-1)
        for k in args.k:
            raw = vote_scores(queries, keys, labels, yte, k, classes)
            centred = vote_scores(centred_queries, centred_keys, labels, yte, k, classes)
            print(f"| {seed} | {k} | {raw[0]:.3f} / {raw[1]:.3f} | {centred[0]:.3f} / {centred[1]:.3f} |", flush=True)


if __name__ == "__main__":
    main()
