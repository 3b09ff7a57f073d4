"""The validation metrics' output transforms keep predictions and labels on one device."""

import pytest
import torch

from medmem.engine.metrics import stack_pred_label, stack_pred_onehot


def decollated(device: str) -> list[dict]:
    """Engine output as MONAI's decollation leaves it: per image, pred (C,) on the run's device, the label a Python int."""
    preds = torch.tensor([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]], device=device)
    return [{"pred": p, "label": label} for p, label in zip(preds, [1, 0, 2])]


# "meta" stands in for a GPU: a device other than the CPU that the labels must follow (a GPU run crashed at its
# first validation when they stayed on the CPU, session 35)
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_labels_follow_the_predictions_device(device):
    preds, labels = stack_pred_label(decollated(device))
    assert preds.shape == (3, 3) and labels.shape == (3,)
    assert labels.device == preds.device == torch.device(device)
    assert labels.dtype == torch.long
    _, onehot = stack_pred_onehot(decollated(device), 3)
    assert onehot.shape == (3, 3) and onehot.device == torch.device(device)


def test_values():
    preds, labels = stack_pred_label(decollated("cpu"))
    assert labels.tolist() == [1, 0, 2]
    assert torch.equal(preds.argmax(1), labels)
    _, onehot = stack_pred_onehot(decollated("cpu"), 3)
    assert onehot.tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 1]]
