"""Classification metrics (ACC, macro AUC, macro F1, confusion matrix) and their plot."""

from __future__ import annotations

import os

import numpy as np

from medmem.atomic import atomic_path


def classification_metrics(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Metrics of probabilities (N, C) against integer labels (N,).

    AUC is one-vs-rest macro over the classes present (binary: the positive class's AUC).
    """
    from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

    pred = probs.argmax(1)
    acc = float((pred == labels).mean())
    f1 = float(f1_score(labels, pred, average="macro", labels=list(range(num_classes)), zero_division=0))
    try:
        if num_classes == 2:
            auc = float(roc_auc_score(labels, probs[:, 1]))
        else:
            present = np.unique(labels)
            auc = float(roc_auc_score(labels, probs[:, present] / probs[:, present].sum(1, keepdims=True), multi_class="ovr", average="macro", labels=present))
    except ValueError:
        auc = float("nan")
    cm = confusion_matrix(labels, pred, labels=list(range(num_classes)))
    return {"acc": acc, "auc": auc, "f1": f1, "confusion_matrix": cm.tolist()}


def plot_confusion_matrix(cm: np.ndarray, class_names: list[str], path: str | os.PathLike) -> None:
    """PNG of a confusion matrix (rows: true class), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def stack_pred_label(output: list[dict]) -> tuple:
    """Ignite ``output_transform`` for decollated engine output: (pred (N, C), label (N,)), both on the predictions'
    device (decollation turns each image's label into a Python number, on the CPU, while a GPU run's predictions stay on
    the GPU)."""
    import torch

    preds = torch.stack([torch.as_tensor(o["pred"]) for o in output])
    labels = torch.stack([torch.as_tensor(o["label"]).reshape(()) for o in output]).long().to(preds.device)
    return preds, labels


def stack_pred_onehot(output: list[dict], num_classes: int) -> tuple:
    """As :func:`stack_pred_label`, the labels one-hot: (pred (N, C), label (N, C)), for MONAI's ``ROCAUC``."""
    import torch

    preds, labels = stack_pred_label(output)
    return preds, torch.nn.functional.one_hot(labels, num_classes)
