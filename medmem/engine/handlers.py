"""Ignite handlers that connect MONAI engines to the external memory and write reports."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from medmem.atomic import write_json_atomic
from medmem.engine.metrics import classification_metrics, plot_confusion_matrix

logger = logging.getLogger(__name__)


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel / DataParallel wrappers."""
    return network.module if hasattr(network, "module") else network


class MemoryWriter:
    """After every training iteration, write the batch's keys/values into the memory.

    The network caches them during its training forward; this handler commits them with the batch's
    ``sample_id`` values (ATMA update for samples already in memory). Under torch.distributed the
    store gathers every rank's batch, so all ranks keep identical memories.
    """

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.log_state)

    def __call__(self, engine: Engine) -> None:
        model = unwrap(self.network)
        if not hasattr(model, "commit_memory"):
            return
        batch = engine.state.batch  # MONAI decollates it into a list of items after the iteration
        ids = batch["sample_id"] if isinstance(batch, dict) else [item["sample_id"] for item in batch]
        labels = batch["label"] if isinstance(batch, dict) else [item["label"] for item in batch]
        model.commit_memory(torch.as_tensor(ids).long().reshape(-1), torch.as_tensor(labels).long().reshape(-1))

    def log_state(self, engine: Engine) -> None:
        model = unwrap(self.network)
        if not hasattr(model, "memory_layers") or not model.memory_layers():
            return
        gates = [torch.sigmoid(layer.gate_logit).mean().item() for layer in model.memory_layers()]
        engine.state.metrics["memory_samples"] = model.memory_size()
        engine.state.metrics["memory_gate"] = float(np.mean(gates))
        logger.info("epoch %d: memory holds %d samples, mean gate %.3f", engine.state.epoch, model.memory_size(), np.mean(gates))


class ClassificationReport:
    """Collect probabilities and labels over an evaluation run; write metrics JSON and a confusion PNG.

    Expects decollated engine outputs with ``pred`` (C,) probabilities and ``label`` (scalar).
    """

    def __init__(self, output_dir: str, class_names: list[str], prefix: str = "test", extra: dict | None = None) -> None:
        self.output_dir, self.class_names, self.prefix, self.extra = Path(output_dir), class_names, prefix, extra or {}
        self.probs: list[np.ndarray] = []
        self.labels: list[int] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine) -> None:
        self.probs, self.labels = [], []

    def collect(self, engine: Engine) -> None:
        for item in engine.state.output:
            self.probs.append(torch.as_tensor(item["pred"]).detach().float().cpu().numpy())
            self.labels.append(int(torch.as_tensor(item["label"]).reshape(-1)[0]))

    def write(self, engine: Engine) -> None:
        metrics = classification_metrics(np.stack(self.probs), np.asarray(self.labels), len(self.class_names))
        report = {"split": self.prefix, "n": len(self.labels), "classes": self.class_names, **metrics, **self.extra}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(report, self.output_dir / f"{self.prefix}_metrics.json")
        plot_confusion_matrix(np.asarray(metrics["confusion_matrix"]), self.class_names, self.output_dir / f"{self.prefix}_confusion.png")
        engine.state.metrics.update({f"{self.prefix}_{k}": metrics[k] for k in ("acc", "auc", "f1")})
        logger.info("%s: ACC %.4f  AUC %.4f  F1 %.4f (n=%d)", self.prefix, metrics["acc"], metrics["auc"], metrics["f1"], len(self.labels))
        print(json.dumps({k: report[k] for k in ("split", "n", "acc", "auc", "f1")}))
