"""The pixel-space case vote in the bundle: fit it after training, and fuse it into evaluation (experimental).

``fit_case_vote`` (bundle config ``case_vote.json``) stores the regime's training images as thumbnails
(:class:`medmem.memory.pixel_vote.PixelCaseVote`), chooses the vote's weight on the validation split against the
trained network's output and writes ``case_vote.pt`` (atomically) and a JSON report. ``CaseVoteInferer``
(``evaluate.json`` with ``case_vote true``) fuses the vote into the network's output. Where validation says the vote
does not help, its weight is 0 and evaluation gives the network's own output.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import torch
from monai.inferers import Inferer

from medmem.atomic import torch_save_atomic, write_json_atomic
from medmem.engine.batch import stack_batches
from medmem.engine.summarize import memory_case_table
from medmem.memory.pixel_vote import PixelCaseVote


@torch.no_grad()
def network_probabilities(network: torch.nn.Module, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Softmax of the network's output (N, num_classes), evaluation mode."""
    network.eval()
    return torch.cat([torch.softmax(network(images[i : i + batch_size]), dim=-1) for i in range(0, len(images), batch_size)]).cpu()


def fit_case_vote(
    network: torch.nn.Module,
    checkpoint: str,
    train_batches: Iterable[dict],
    val_batches: Iterable[dict],
    output_path: str,
    report_path: str,
    k: int = 10,
    size: int = 28,
    device: torch.device | str = "cpu",
    class_names: list[str] | None = None,
    training_datalist: list[dict] | None = None,
) -> dict:
    """Fit the case vote on the training images, weigh it on validation, save it beside the checkpoint.

    With ``training_datalist`` (and ``class_names``) the file also names every stored case (``{sample_id: {case_id,
    label, source}}``), so that ``medmem predict --case-vote`` can show the training cases behind each vote.
    Returns (and writes to ``report_path``) the chosen weight and the validation ACC / log loss of every candidate."""
    network.load_state_dict(torch.load(checkpoint, map_location=device, weights_only=True))
    x_train, y_train, ids_train = stack_batches(train_batches, "label", "sample_id")
    x_val, y_val = stack_batches(val_batches)
    num_classes = int(network_probabilities(network, x_val[:1].to(device)).shape[-1])
    vote = PixelCaseVote(num_classes, x_train.shape[1], size=size, k=k).fit(x_train, y_train, ids_train)
    weight, scores = vote.calibrate(network_probabilities(network, x_val.to(device)), x_val, y_val)
    save_case_vote(vote, memory_case_table(ids_train.tolist(), training_datalist, class_names or []) if training_datalist else {}, output_path)
    report = {
        "checkpoint": str(checkpoint), "case_vote": str(output_path), "training_images": len(y_train), "validation_images": len(y_val),
        "k": k, "size": size, "weight": weight, "distance_power": float(vote.power), "validation": {str(w): s for w, s in scores.items()},
    }  # fmt: skip
    write_json_atomic(report, report_path)
    return report


def save_case_vote(vote: PixelCaseVote, cases: dict[str, dict], path: str | os.PathLike) -> None:
    """Write a case vote and its named cases (``{sample_id: {case_id, label, source}}``) atomically."""
    torch_save_atomic({"config": vote.config, "state_dict": vote.state_dict(), "cases": cases}, path)


def load_case_vote_file(path: str) -> tuple[PixelCaseVote, dict[str, dict]]:
    """A fitted ``PixelCaseVote`` from ``fit_case_vote``'s file and its stored cases by sample id (empty for files
    written without a datalist, or before bundle 0.6.0)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        vote = PixelCaseVote(**saved["config"])
        vote.load_state_dict(saved["state_dict"])
    except (OSError, RuntimeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a case vote written by the bundle's case_vote.json ({str(exc).splitlines()[0]})") from exc
    return vote, saved.get("cases", {})


def load_case_vote(path: str) -> PixelCaseVote:
    """A fitted ``PixelCaseVote`` from ``fit_case_vote``'s file."""
    return load_case_vote_file(path)[0]


class CaseVoteInferer(Inferer):
    """A MONAI inferer whose output is ``log((1 - w) softmax(network(x)) + w vote(x))`` (B, num_classes)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.vote = load_case_vote(path)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        probabilities = torch.softmax(network(inputs, *args, **kwargs), dim=-1)
        fused = self.vote(probabilities.cpu(), inputs.cpu())
        return torch.log(fused.clamp(min=1e-8)).to(inputs.device)
