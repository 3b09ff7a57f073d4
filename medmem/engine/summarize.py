"""The post-training step: distil the memory into prototypes and write the deployable checkpoint."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from medmem.atomic import torch_save_atomic, write_json_atomic
from medmem.engine.metrics import classification_metrics
from medmem.memory.prototypes import drop_full_memory, summarize_memory

logger = logging.getLogger(__name__)


@torch.no_grad()
def predict_probs(model: torch.nn.Module, batches: Iterable[dict], device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray, float]:
    """Softmax probabilities (N, C), labels (N,) and seconds spent in the network."""
    model.eval()
    probs, labels, seconds = [], [], 0.0
    for batch in batches:
        x = torch.as_tensor(batch["image"]).float().to(device)
        start = time.perf_counter()
        logits = model(x)
        seconds += time.perf_counter() - start
        probs.append(logits.softmax(-1).cpu().numpy())
        labels.append(torch.as_tensor(batch["label"]).reshape(-1).numpy())
    return np.concatenate(probs), np.concatenate(labels), seconds


PROTOTYPE_TENSORS = ("proto_keys", "proto_values", "proto_members", "proto_labels")


def summarize_checkpoint(
    network: torch.nn.Module,
    checkpoint: str,
    train_batches: Iterable[dict],
    val_batches: Iterable[dict],
    output_path: str,
    report_path: str,
    num_prototypes: int,
    epochs: int = 3,
    lr: float = 1e-2,
    seed: int = 0,
    device: torch.device | str = "cpu",
    class_names: list[str] | None = None,
    training_datalist: list[dict] | None = None,
    augmentation: dict | None = None,
) -> dict:
    """Load a trained full-memory checkpoint, summarise its memory, write the deployable checkpoint.

    Prototypes are the memory's k-means clusters, then distilled (``epochs``); the distilled ones are kept
    only if their validation accuracy is at least the k-means ones' (``prototypes_kept`` in the report).
    The report (JSON) holds validation ACC/AUC/F1 with the full memory and with the prototypes, their
    difference, and the network time of both on the validation split. A model card ``<output>.json``
    beside the checkpoint (see :func:`write_model_card`) lets ``medmem predict`` use it on its own;
    ``augmentation`` (the training recipe's ``train_transforms`` switches) goes into it so that fine-tuning
    elsewhere (the MONAI Label app) augments as the network was trained.
    """
    if getattr(network, "readout", None) is not None:
        raise ValueError(f"{checkpoint}: a network with the neighbour readout has no prototype summary yet; deploy model_full.pt as it is")
    if not network.memory_layers():
        raise ValueError(f"{checkpoint}: the network has no memorising block, so there is no memory to summarise")
    network.load_state_dict(torch.load(checkpoint, map_location=device, weights_only=True))
    network.to(device)
    chosen = choose_prototypes(network, train_batches, val_batches, num_prototypes, epochs, lr, seed, device)
    memory_ids = network.memory_layers()[0].memory.sample_ids().tolist()
    drop_full_memory(network)
    probs, labels, proto_seconds = predict_probs(network, val_batches, device)
    proto = classification_metrics(probs, labels, network.config["num_classes"])
    off = memory_off_metrics(network, val_batches, device)
    full, kmeans, distilled = chosen["full"], chosen["kmeans"], chosen["distilled"]
    by_mode = {mode: {k: m[k] for k in ("acc", "auc", "f1")} for mode, m in (("full", full), ("prototypes", proto), ("off", off))}
    best = best_deployment_mode(by_mode)
    training_cases = case_table(network, training_datalist or [], class_names or [])
    write_json_atomic({"cases": memory_case_table(memory_ids, training_datalist or [], class_names or [])}, Path(output_path).parent / "memory_cases.json")
    torch_save_atomic(network.state_dict(), output_path)
    threshold = familiarity_threshold(network, val_batches, device)
    validation = {**by_mode, "best": best}
    write_model_card(network, str(output_path).rsplit(".", 1)[0] + ".json", class_names or [], training_cases, threshold, augmentation, validation)
    report = {
        "checkpoint": str(checkpoint),
        "deployable": str(output_path),
        "summary": dataclasses.asdict(chosen["summary"]),
        "validation_full_memory": by_mode["full"],
        "validation_prototypes": by_mode["prototypes"],
        "validation_memory_off": by_mode["off"],
        "best_on_validation": best,
        "validation_kmeans_prototypes": {k: kmeans[k] for k in ("acc", "auc", "f1")},
        "validation_distilled_prototypes": {k: distilled[k] for k in ("acc", "auc", "f1")},
        "prototypes_kept": chosen["kept"],
        "delta_acc": proto["acc"] - full["acc"],
        "network_seconds_full": chosen["full_seconds"],
        "network_seconds_prototypes": proto_seconds,
    }
    write_json_atomic(report, report_path)
    logger.info("prototypes: val ACC %.4f (full memory %.4f, memory off %.4f); network time %.2fs vs %.2fs", proto["acc"], full["acc"], off["acc"], proto_seconds, chosen["full_seconds"])
    if best != "prototypes":
        logger.warning("on validation the network scores best with memory mode %r (%s); model.pt ships the prototypes: deploy with "
                       "--inference_memory_mode %s (on model_full.pt)%s to follow validation", best, by_mode[best], best,
                       " or medmem predict --memory-mode off (on model.pt)" if best == "off" else "")  # fmt: skip
    print({k: report[k] for k in ("validation_full_memory", "validation_prototypes", "validation_memory_off", "best_on_validation", "delta_acc", "prototypes_kept")})
    return report


# validation ties keep the checkpoint the bundle ships (model.pt: prototypes), then the full memory
DEPLOYMENT_PREFERENCE = ("prototypes", "full", "off")


def best_deployment_mode(by_mode: dict[str, dict]) -> str:
    """The memory mode with the highest validation ACC, then AUC; ties go by ``DEPLOYMENT_PREFERENCE``.

    Sessions 23-34 found the memory ViT's gain in its trained weights, not its read: the same weights with the memory
    off (a plain ViT's forward) often score as well on validation, and then a user can deploy them without a memory.
    """
    return max(DEPLOYMENT_PREFERENCE, key=lambda m: (by_mode[m]["acc"], by_mode[m]["auc"], -DEPLOYMENT_PREFERENCE.index(m)))


def memory_off_metrics(network: torch.nn.Module, val_batches: Iterable[dict], device: torch.device | str = "cpu") -> dict:
    """Validation metrics of ``network``'s weights with every memorising layer run as plain self-attention (memory mode
    ``off``); the network is left in the mode it was in."""
    mode = network.config["memory_mode"]
    network.set_memory_mode("off")
    try:
        probs, labels, _ = predict_probs(network, val_batches, device)
    finally:
        network.set_memory_mode(mode)
    return classification_metrics(probs, labels, network.config["num_classes"])


def choose_prototypes(
    network: torch.nn.Module,
    train_batches: Iterable[dict],
    val_batches: Iterable[dict],
    num_prototypes: int,
    epochs: int = 3,
    lr: float = 1e-2,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict:
    """Make ``num_prototypes`` prototypes for a trained full-memory network and keep the better of two.

    k-means prototypes first, then distilled from them; the distilled ones are kept only if their
    validation accuracy is at least the k-means ones' (on PneumoniaMNIST 10% distillation lost 5 ACC
    points that k-means alone kept: docs/design.md). The network ends in ``prototypes`` mode with the
    kept prototypes and its full memory still present. Returns validation metrics ``full``, ``kmeans``,
    ``distilled``, the ``kept`` choice, the distillation ``summary`` and ``full_seconds`` (network time).
    """
    network.set_memory_mode("full")
    num_classes = network.config["num_classes"]
    probs, labels, full_seconds = predict_probs(network, val_batches, device)
    full = classification_metrics(probs, labels, num_classes)
    summarize_memory(network, train_batches, num_prototypes, epochs=0, seed=seed, device=device)
    probs, labels, _ = predict_probs(network, val_batches, device)
    kmeans = classification_metrics(probs, labels, num_classes)
    kmeans_state = prototype_state(network)
    summary = summarize_memory(network, train_batches, num_prototypes, epochs=epochs, lr=lr, seed=seed, device=device, init="current")
    probs, labels, _ = predict_probs(network, val_batches, device)
    distilled = classification_metrics(probs, labels, num_classes)
    kept = "distilled" if summary.steps > 0 and distilled["acc"] >= kmeans["acc"] else "kmeans"
    if kept == "kmeans":
        load_prototype_state(network, kmeans_state)
    return {"full": full, "kmeans": kmeans, "distilled": distilled, "kept": kept, "summary": summary, "full_seconds": full_seconds}


def prototype_state(network: torch.nn.Module) -> list[dict[str, torch.Tensor]]:
    """Copies of every memorising layer's prototype tensors (keys, values, members, labels)."""
    return [{name: getattr(layer, name).detach().clone() for name in PROTOTYPE_TENSORS} for layer in network.memory_layers()]


def load_prototype_state(network: torch.nn.Module, state: list[dict[str, torch.Tensor]]) -> None:
    for layer, saved in zip(network.memory_layers(), state):
        for name, tensor in saved.items():
            setattr(layer, name, tensor.clone())


def case_table(network: torch.nn.Module, datalist: list[dict], class_names: list[str]) -> dict[str, list]:
    """``{sample_id: [case_id, class name, pseudo_label]}`` for the training cases the prototypes stand for;
    ``pseudo_label`` is true where a teacher network gave the class (a self-training manifest), not a person."""
    wanted = {int(i) for layer in network.memory_layers() for i in layer.proto_members.flatten().tolist() if i >= 0}
    table = {}
    for item in datalist:
        if int(item["sample_id"]) in wanted:
            label = int(item["label"])
            name = class_names[label] if label < len(class_names) else str(label)
            table[str(item["sample_id"])] = [item.get("case_id", ""), name, bool(item.get("pseudo_label", False))]
    return table


def memory_case_table(sample_ids: list[int], datalist: list[dict], class_names: list[str]) -> dict[str, dict]:
    """``{sample_id: {case_id, label, source, pseudo_label}}`` for every sample in the full memory (for memory edits)."""
    by_id = {int(item["sample_id"]): item for item in datalist}
    table = {}
    for sid in sample_ids:
        item = by_id.get(int(sid), {})
        label = int(item.get("label", -1))
        name = class_names[label] if 0 <= label < len(class_names) else "unknown"
        table[str(sid)] = {"case_id": item.get("case_id", f"sample-{sid}"), "label": name, "source": "training", "pseudo_label": bool(item.get("pseudo_label", False))}
    return table


@torch.no_grad()
def familiarity_threshold(network: torch.nn.Module, batches: Iterable[dict], device: torch.device | str = "cpu", quantile: float = 0.01) -> float | None:
    """Out-of-distribution threshold: the ``quantile`` of the class token's familiarity (similarity to
    its nearest prototype) over validation images. Below it, a prediction is flagged."""
    layers = network.memory_layers()
    if not layers:
        return None
    network.eval()
    layers[-1].record_evidence = True
    scores = []
    try:
        for batch in batches:
            network(torch.as_tensor(batch["image"]).float().to(device))
            scores.append(layers[-1].evidence["familiarity"].cpu())
    finally:
        layers[-1].record_evidence = False
    return float(torch.quantile(torch.cat(scores), quantile)) if scores else None


def write_model_card(
    network: torch.nn.Module,
    path: str,
    class_names: list[str],
    training_cases: dict,
    ood_threshold: float | None = None,
    augmentation: dict | None = None,
    validation: dict | None = None,
) -> None:
    """JSON beside a deployable checkpoint: how to build the network, its input, its classes, the
    out-of-distribution threshold, the training cases (relative path, class; no patient data)
    behind its prototypes, the training augmentation (keyword arguments of
    :func:`medmem.data.train_transforms`, e.g. ``{"rotate90": false, "intensity": true}``; ``None`` when unknown), and
    ``validation``: ACC / AUC / F1 per memory mode (``full``, ``prototypes``, ``off``) and the ``best`` of them
    (``None`` after a memory edit, which those scores no longer describe)."""
    card = {
        "network": dict(network.config), "class_names": list(class_names), "ood_threshold": ood_threshold,
        "training_cases": training_cases, "augmentation": augmentation, "validation": validation,
    }  # fmt: skip
    write_json_atomic(card, path)
