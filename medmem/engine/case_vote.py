"""The case vote in the bundle: fit it after training, and fuse it into evaluation (experimental).

``fit_case_vote`` (bundle config ``case_vote.json``) stores the regime's training images, as thumbnails
(``case_vote_space "pixels"``, :class:`medmem.memory.pixel_vote.PixelCaseVote`) or as the class-token features of the
frozen pre-trained trunk (``"trunk"``, :class:`medmem.memory.trunk_vote.TrunkCaseVote`), chooses the vote's weight on the
validation split against the trained network's output and writes ``case_vote.pt`` (atomically) and a JSON report. ``CaseVoteInferer``
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
from medmem.engine.dihedral import dihedral_probabilities
from medmem.engine.summarize import memory_case_table
from medmem.memory.case_vote import CaseVote
from medmem.memory.pixel_vote import PixelCaseVote
from medmem.memory.trunk_vote import TrunkCaseVote

# where the stored cases are compared: the class that stores them, by the name case_vote.pt records
CASE_VOTE_SPACES = {kind.space: kind for kind in (PixelCaseVote, TrunkCaseVote)}
# the prediction fields that list the training cases behind a case vote, one per space (empty but for the vote's own)
CASE_EVIDENCE_KEYS = tuple(kind.evidence_key for kind in CASE_VOTE_SPACES.values())


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
    space: str = "pixels",
    pretrained_trunk: str | None = None,
) -> dict:
    """Fit the case vote on the training images, weigh it on validation, save it beside the checkpoint.

    ``space`` says where cases are compared: ``"pixels"`` (``size``-px thumbnails) or ``"trunk"`` (the class-token
    features of the trunk in ``pretrained_trunk``, frozen: the network's own fine-tuned weights are not used).

    With ``training_datalist`` (and ``class_names``) the file also names every stored case (``{sample_id: {case_id,
    label, source}}``), so that ``medmem predict --case-vote`` can show the training cases behind each vote.
    Returns (and writes to ``report_path``) the chosen weight and the validation ACC / log loss of every candidate."""
    network.load_state_dict(torch.load(checkpoint, map_location=device, weights_only=True))
    x_train, y_train, ids_train = stack_batches(train_batches, "label", "sample_id")
    x_val, y_val = stack_batches(val_batches)
    num_classes = int(network_probabilities(network, x_val[:1].to(device)).shape[-1])
    vote = new_case_vote(space, num_classes, x_train.shape[1], k, size, pretrained_trunk).fit(x_train, y_train, ids_train)
    weight, scores = vote.calibrate(network_probabilities(network, x_val.to(device)), x_val, y_val)
    save_case_vote(vote, memory_case_table(ids_train.tolist(), training_datalist, class_names or []) if training_datalist else {}, output_path)
    report = {
        "checkpoint": str(checkpoint), "case_vote": str(output_path), "training_images": len(y_train), "validation_images": len(y_val),
        "space": space, "pretrained_trunk": str(pretrained_trunk or ""), "k": k, "size": vote.config.get("size"), "weight": weight, "distance_power": float(vote.power), "validation": {str(w): s for w, s in scores.items()},
    }  # fmt: skip
    write_json_atomic(report, report_path)
    return report


def new_case_vote(space: str, num_classes: int, in_channels: int, k: int, size: int, pretrained_trunk: str | None) -> CaseVote:
    """An empty case vote comparing cases in ``space`` (``CASE_VOTE_SPACES``); ``"trunk"`` needs ``pretrained_trunk``."""
    if space not in CASE_VOTE_SPACES:
        raise ValueError(f"case_vote_space must be one of {sorted(CASE_VOTE_SPACES)}, got {space!r}")
    if space == "pixels":
        return PixelCaseVote(num_classes, in_channels, size=size, k=k)
    if not pretrained_trunk:
        raise ValueError("case_vote_space 'trunk' compares cases in a pre-trained trunk's features: give its file (pretrained_trunk)")
    vote = TrunkCaseVote.from_trunk_file(pretrained_trunk, num_classes, k=k)
    if vote.in_channels != in_channels:
        raise ValueError(f"{pretrained_trunk}: trunk pre-trained on {vote.in_channels}-channel images, the training images have {in_channels}")
    return vote


def save_case_vote(vote: CaseVote, cases: dict[str, dict], path: str | os.PathLike) -> None:
    """Write a case vote, its space and its named cases (``{sample_id: {case_id, label, source}}``) atomically."""
    torch_save_atomic({"space": vote.space, "config": vote.config, "state_dict": vote.state_dict(), "cases": cases}, path)


def load_case_vote_file(path: str) -> tuple[CaseVote, dict[str, dict]]:
    """A fitted case vote from ``fit_case_vote``'s file and its stored cases by sample id (empty for files written without
    a datalist, or before bundle 0.6.0). Files from before bundle 0.9.0 name no space: they are pixel votes."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        vote = CASE_VOTE_SPACES[saved.get("space", "pixels")](**saved["config"])
        vote.load_state_dict(saved["state_dict"])
    except (OSError, RuntimeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a case vote written by the bundle's case_vote.json ({str(exc).splitlines()[0]})") from exc
    return vote, saved.get("cases", {})


def load_case_vote(path: str) -> CaseVote:
    """A fitted case vote from ``fit_case_vote``'s file."""
    return load_case_vote_file(path)[0]


class CaseVoteInferer(Inferer):
    """A MONAI inferer whose output is ``log((1 - w) softmax(network(x)) + w vote(x))`` (B, num_classes). With
    ``dihedral`` the network's softmax is averaged over the 8 flips and turns of x (``medmem.engine.dihedral``); the
    vote still compares x itself with the stored cases, and w stays the one validation chose for the plain softmax."""

    def __init__(self, path: str, dihedral: bool = False) -> None:
        super().__init__()
        self.vote = load_case_vote(path)
        self.dihedral = dihedral

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        # the vote (its bank, and a trunk vote's encoder) follows the inputs' device: a trunk's forward pass on the CPU
        # would be the slow step of a GPU evaluation
        self.vote.to(inputs.device)
        if self.dihedral:
            probabilities = dihedral_probabilities(network, inputs, *args, **kwargs)
        else:
            probabilities = torch.softmax(network(inputs, *args, **kwargs), dim=-1)
        return torch.log(self.vote(probabilities, inputs).clamp(min=1e-8))
