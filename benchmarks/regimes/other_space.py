"""Do neighbours found in another space than the network's own features add to the plain ViT?

    python benchmarks/regimes/other_space.py --cells pneumoniamnist:vit_cs_ia:3 brain_tumor_mri_training:vit_cs_ia:1 --seeds 0 1 2

Sessions 12 and 13 read back neighbours found in the trained network's final class-token space (the memory read in
attention, the neighbour readout) and found they say what the features already say. This check asks, before building
anything, whether neighbours found elsewhere carry what the head lacks. For each trained plain run
``<network>_r<R>_s<seed>`` on disk (seeds whose run is missing or unfinished are skipped), a k-NN vote (cosine, k = 10,
distance-weighted: the study's ``vit_knn``) over the regime's training images in each space:

- ``pixels``: the 28-px image, standardised per pixel on the training images (what the pixel ``logreg`` reads);
- ``stem``: the mean of the patch tokens the (convolutional) stem makes, before any attention block;
- ``block 2``, ``block 4``: the mean of all tokens after that transformer block (of 6);
- ``final``: the normalised class token the head reads (the study's ``vit_cs_knn`` space).

Each vote is fused with the plain ViT's softmax, ``(1 - w) softmax + w vote``, with ``w`` in 0, 0.1, ..., 1 chosen on
the validation split (highest validation ACC, the smallest ``w`` among ties; the test split is scored once). Reports
test ACC / AUC of the plain ViT, of the pixel k-NN alone, and of each fused space, and the chosen ``w`` per space. A
space whose fused row is not above ``plain`` (or whose ``w`` is 0) holds nothing the head lacks that a memory read from
it could add.

Two controls for the pixel space: ``pixel logreg fused``, the pixel logistic regression (the study's ``logreg``) fused
the same way instead of the pixel k-NN (is it the neighbours, or any second opinion from the pixels?); and the pixel
fusion's ACC gain over ``plain`` on the half of the test images nearest to a training image in pixel space (cosine on
the standardised 28-px images) and on the farther half: a gain only on the near half would be copies of training
images (re-saved scans, adjacent slices) found again, not evidence a memory generalises. The pixel fusion's gain on the
validation split (where its weight was chosen) is reported beside them.
Writes ``benchmarks/results/other_space.md``.
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from head_vs_vote import load  # noqa: E402
from run_regimes import DATASETS, NETWORKS, REPO, cell_finished, load_arrays, require_data_root  # noqa: E402
from seed_tables import markdown, tabulate  # noqa: E402

SPACES = ("pixels", "stem", "block 2", "block 4", "final")
VARIANTS = ("plain", "pixels k-NN", *(f"{s} fused" for s in SPACES), "pixel logreg fused")
READ = (*(f"w {s}" for s in SPACES), "w logreg", "validation gain", "gain near half", "gain far half")
WEIGHTS = np.round(np.linspace(0, 1, 11), 1)
K = 10


@functools.lru_cache(maxsize=None)
def arrays(dataset: str, split: str, regime: int | None, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """(N, C, size, size) images and (N,) labels of one split (cached: each cell reads its splits once per size)."""
    return load_arrays(dataset, split, regime, size, DATASETS[dataset]["in_channels"])


def space_features(net, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Features (N, D) of images (N, C, H, W) in the network spaces of ``SPACES`` (all but ``pixels``), no gradient."""
    out: dict[str, list[torch.Tensor]] = {s: [] for s in SPACES[1:]}
    with torch.no_grad():
        for i in range(0, len(x), 256):
            t = net.patch_embedding(x[i : i + 256])  # (B, N, hidden)
            out["stem"].append(t.mean(1))
            t = torch.cat([net.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
            for b, block in enumerate(net.blocks, start=1):
                t = block(t)
                if f"block {b}" in out:
                    out[f"block {b}"].append(t.mean(1))
            out["final"].append(net.norm(t)[:, 0])
    return {s: torch.cat(v) for s, v in out.items()}


def pixel_features(dataset: str, split: str, regime: int | None, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    x, _ = arrays(dataset, split, regime, 28)
    return (x.flatten(1).numpy() - mean) / std


def knn_vote(train: np.ndarray, labels: np.ndarray, query: np.ndarray, num_classes: int) -> np.ndarray:
    """(Q, num_classes) distance-weighted cosine k-NN vote of ``query`` (Q, D) over ``train`` (N, D)."""
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=min(K, len(labels)), weights="distance", metric="cosine").fit(train, labels)
    vote = np.zeros((len(query), num_classes))
    vote[:, knn.classes_] = knn.predict_proba(query)
    return vote


def logreg_probabilities(train: np.ndarray, labels: np.ndarray, queries: list[np.ndarray], num_classes: int, seed: int) -> list[np.ndarray]:
    """(Q, num_classes) probabilities of the study's pixel ``logreg`` (on standardised pixels) for each query array."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=3000, C=0.1, random_state=seed).fit(train, labels)
    out = []
    for q in queries:
        p = np.zeros((len(q), num_classes))
        p[:, clf.classes_] = clf.predict_proba(q)
        out.append(p)
    return out


def nearest_similarity(train: np.ndarray, query: np.ndarray) -> np.ndarray:
    """(Q,) cosine similarity of each query (Q, D) to its nearest row of ``train`` (N, D)."""
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)  # noqa: E731
    return (unit(query) @ unit(train).T).max(1)


def choose_weight(plain_val: np.ndarray, vote_val: np.ndarray, y_val: np.ndarray) -> float:
    """The fusion weight with the highest validation ACC (the smallest among ties)."""
    accs = [float((((1 - w) * plain_val + w * vote_val).argmax(1) == y_val).mean()) for w in WEIGHTS]
    return float(WEIGHTS[int(np.argmax(accs))])


def measure(dataset: str, network: str, regime: int, seed: int, runs: Path, manifest: dict, x: torch.Tensor, y) -> dict | None:
    from medmem.engine.metrics import classification_metrics

    c = len(manifest["classes"])
    run = runs / dataset / f"{network}_r{regime}_s{seed}"
    if not cell_finished(dataset, network, regime, seed, runs, manifest):
        print(f"skip {dataset} r{regime} s{seed}: {run} is not trained", file=sys.stderr)
        return None
    net = load(dataset, network, run, c)
    size = DATASETS[dataset]["image_size"]
    x_train, y_train = arrays(dataset, "training", regime, size)
    x_val, y_val = arrays(dataset, "validation", None, size)
    softmax = lambda images: torch.cat([net(images[i : i + 256]).softmax(-1) for i in range(0, len(images), 256)]).numpy()  # noqa: E731
    with torch.no_grad():
        plain = {"validation": softmax(x_val), "test": softmax(x)}
    feats = {split: space_features(net, images) for split, images in (("training", x_train), ("validation", x_val), ("test", x))}
    pix_train = arrays(dataset, "training", regime, 28)[0].flatten(1).numpy()
    mean, std = pix_train.mean(0), pix_train.std(0) + 1e-6
    for split, reg in (("training", regime), ("validation", None), ("test", None)):
        feats[split]["pixels"] = pixel_features(dataset, split, reg, mean, std)

    results: dict = {"plain": classification_metrics(plain["test"], y, c), "read": {}}
    for space in SPACES:
        as_np = lambda split: np.asarray(feats[split][space])  # noqa: E731
        vote_val = knn_vote(as_np("training"), y_train, as_np("validation"), c)
        vote_test = knn_vote(as_np("training"), y_train, as_np("test"), c)
        w = choose_weight(plain["validation"], vote_val, y_val)
        results[f"{space} fused"] = classification_metrics((1 - w) * plain["test"] + w * vote_test, y, c)
        results["read"][f"w {space}"] = w
        if space == "pixels":
            results["pixels k-NN"] = classification_metrics(vote_test, y, c)
            # what the weight was chosen on: the pixel fusion's ACC gain on the validation split (points)
            fused_val = (1 - w) * plain["validation"] + w * vote_val
            results["read"]["validation gain"] = 100 * float((fused_val.argmax(1) == y_val).mean() - (plain["validation"].argmax(1) == y_val).mean())
            # the gain split by how close each test image is to a training image in pixel space
            fused_right = ((1 - w) * plain["test"] + w * vote_test).argmax(1) == y
            plain_right = plain["test"].argmax(1) == y
            closeness = nearest_similarity(as_np("training"), as_np("test"))
            near = closeness >= np.median(closeness)
            for half, mask in (("near", near), ("far", ~near)):
                results["read"][f"gain {half} half"] = 100 * float(fused_right[mask].mean() - plain_right[mask].mean())
    val_lr, test_lr = logreg_probabilities(feats["training"]["pixels"], y_train, [feats["validation"]["pixels"], feats["test"]["pixels"]], c, seed)
    w = choose_weight(plain["validation"], val_lr, y_val)
    results["pixel logreg fused"] = classification_metrics((1 - w) * plain["test"] + w * test_lr, y, c)
    results["read"]["w logreg"] = w
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="+", required=True, help="dataset:network:regime, network a trained plain study network")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--runs", default=str(REPO / "runs" / "regimes"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "other_space.md"))
    args = p.parse_args()
    require_data_root()
    from medmem.atomic import write_text_atomic

    torch.set_num_threads(1)
    cells = []
    for cell in args.cells:
        dataset, network, regime = (cell.split(":") + ["", ""])[:3]
        if dataset not in DATASETS or NETWORKS.get(network, {}).get("memory_mode") != "off" or not regime.isdigit():
            sys.exit(f"{cell}: expected dataset:network:regime, a dataset of {sorted(DATASETS)} and a plain (memory off) study network")
        cells.append(([dataset, network, regime], dataset, {"network": network, "regime": int(regime)}))
    runs = Path(args.runs)
    rows, summary = tabulate(cells, args.seeds, lambda d, seed, m, x, y, network, regime: measure(d, network, regime, seed, runs, m, x, y),
                             VARIANTS, READ, ("pixels fused", "plain"))
    made_by = [
        f"Made by `python benchmarks/regimes/other_space.py --cells {' '.join(args.cells)} --seeds {' '.join(map(str, args.seeds))}`",
        f"(machine: {platform.machine()}, 2 CPU cores, torch {torch.__version__}) on the study's trained plain runs; test split, "
        "each fusion weight chosen on the validation split. See the script's docstring for the spaces.",
    ]
    text = markdown("Do neighbours found in another space add to the plain ViT?", made_by, ["dataset", "network", "regime %"], VARIANTS, READ, summary, rows,
                    ("pixels fused", "plain"), "pixels fused − plain",
                    "Per seed (the last columns: the fusion weight chosen on validation per space; the pixel fusion's gain over `plain` in ACC "
                    "points on the validation split, and on the test half nearest to / farthest from the training images in pixel space):")
    write_text_atomic(text, Path(args.out))


if __name__ == "__main__":
    main()
