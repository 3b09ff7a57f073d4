"""What the bundles call: batch preparation, memory handlers, metrics and reports."""

from medmem.engine import case_vote, consistency, dihedral, pixel_index, predict, pseudo_label, summarize
from medmem.engine.batch import MixUpBatch, PrepareBatchWithIds, training_batches
from medmem.engine.checkpoints import (
    CheckpointSaver,
    checkpoint_interval,
    find_last_checkpoint,
    objects_in_checkpoint,
    resolve_manifest,
)
from medmem.engine.handlers import ClassificationReport, MemoryWriter
from medmem.engine.losses import MemoryAwareLoss
from medmem.engine.metrics import classification_metrics, stack_pred_label
from medmem.engine.weight_average import WeightAverage

__all__ = ["case_vote", "consistency", "dihedral", "pixel_index", "pseudo_label", "predict", "summarize", "ClassificationReport", "MemoryWriter", "MemoryAwareLoss", "PrepareBatchWithIds", "MixUpBatch", "training_batches", "classification_metrics", "stack_pred_label", "find_last_checkpoint", "resolve_manifest", "CheckpointSaver", "checkpoint_interval", "objects_in_checkpoint", "WeightAverage"]
