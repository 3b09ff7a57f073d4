"""A labelled memory of training images whose nearest cases vote, fused with a network at a weight chosen on held-out
cases: the part of a case vote that does not depend on how an image is described.

What a stored case is belongs to the class that mixes :class:`CaseVote` in: a standardised pixel thumbnail
(:class:`medmem.memory.pixel_vote.PixelCaseVote`) or the class-token features of a frozen self-supervised trunk
(:class:`medmem.memory.trunk_vote.TrunkCaseVote`). Either supplies ``descriptors(images) -> (B, D)`` (unit norm),
``fit_statistics(images)`` and a ``bank`` buffer; this mixin keeps the labels, the sample ids that name the cases, the
validated weight ``w`` and the distance power ``p``.

A query's ``k`` nearest stored cases (cosine) vote, weighted by ``1 / distance ** p`` (p = 1: scikit-learn's
distance-weighted k-NN). The model's output becomes ``(1 - w) probabilities + w vote`` (:func:`medmem.memory.vote.fused`),
``w`` and ``p`` chosen together on labelled held-out cases (:meth:`CaseVote.calibrate`; w = 0 where the vote does not help).
"""

from __future__ import annotations

import torch

from medmem.memory.vote import VOTE_WEIGHT_GRID, choose_vote, fused

EPS = 1e-6
# distance powers the calibration chooses from (1: scikit-learn's distance weights, the only one before bundle 0.6.0)
DISTANCE_POWER_GRID = (0.0, 0.5, 1.0, 2.0, 4.0)


class CaseVote:
    """Mixin over an ``nn.Module`` with ``bank`` (N, D): labels (N,), sample ids (N,; -1 where not given), the fused weight
    and the distance power. The module's ``__init__`` calls :meth:`_init_vote` after its own."""

    bank: torch.Tensor
    resized_buffers = ("bank", "labels", "sample_ids")  # first in the MRO: a checkpoint sizes all three
    space: str  # where cases are compared: the name case_vote.pt records (bundle case_vote_space)
    evidence_key: str  # the predictions' field that lists the cases behind a vote, named for the space

    def _init_vote(self, num_classes: int, k: int) -> None:
        if num_classes < 2 or k < 1:
            raise ValueError(f"{type(self).__name__} needs num_classes >= 2 and k >= 1; got {num_classes}, {k}")
        self.num_classes, self.k = num_classes, k
        self.register_buffer("labels", torch.zeros(0, dtype=torch.long))
        self.register_buffer("sample_ids", torch.zeros(0, dtype=torch.long))
        self.register_buffer("weight", torch.zeros((), dtype=torch.float64))  # w of the fused output; 0 until calibrated
        self.register_buffer("power", torch.ones((), dtype=torch.float64))  # neighbours weighted 1 / distance ** power

    def _require_cases(self) -> None:
        if len(self.labels) == 0:
            raise RuntimeError(f"{type(self).__name__} is empty: fit it on the training images first")

    @torch.no_grad()
    def fit(self, images: torch.Tensor, labels: torch.Tensor, sample_ids: torch.Tensor | None = None):
        """Store the training images (N, C, *spatial) with their labels (N,) and, to name them as evidence, their sample ids
        (N,); whatever the descriptors are standardised by comes from these images."""
        labels = torch.as_tensor(labels).reshape(-1).long()
        if len(images) != len(labels) or len(labels) == 0:
            raise ValueError(f"need one label per image and at least one image, got {len(images)} images and {len(labels)} labels")
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got {int(labels.min())}..{int(labels.max())}")
        sample_ids = torch.full_like(labels, -1) if sample_ids is None else torch.as_tensor(sample_ids).reshape(-1).long()
        if len(sample_ids) != len(labels):
            raise ValueError(f"need one sample id per image, got {len(sample_ids)} ids for {len(labels)} images")
        self.fit_statistics(images)
        self.bank, self.labels, self.sample_ids = self.descriptors(images), labels.clone(), sample_ids.clone()
        return self

    @torch.no_grad()
    def add(self, images: torch.Tensor, labels: torch.Tensor, sample_ids: torch.Tensor) -> None:
        """Store more cases (B, C, *spatial) with labels (B,) and new sample ids (B,), described as the fitted ones (the
        standardisation is not refitted: the stored cases and the validated weight stay as they were)."""
        labels, sample_ids = torch.as_tensor(labels).reshape(-1).long(), torch.as_tensor(sample_ids).reshape(-1).long()
        self._require_cases()
        if not len(images) == len(labels) == len(sample_ids) or bool(torch.isin(sample_ids, self.sample_ids[self.sample_ids >= 0]).any()):
            raise ValueError("add needs one label and one new sample id per image")
        self.bank = torch.cat([self.bank, self.descriptors(images).to(self.bank.dtype)])
        self.labels, self.sample_ids = torch.cat([self.labels, labels]), torch.cat([self.sample_ids, sample_ids])

    @torch.no_grad()
    def relabel(self, sample_ids: list[int], label: int) -> None:
        """Give the stored cases ``sample_ids`` the class ``label``."""
        self.labels[torch.isin(self.sample_ids, torch.as_tensor(sample_ids, dtype=torch.long))] = label

    @torch.no_grad()
    def remove(self, sample_ids: list[int]) -> int:
        """Drop the stored cases ``sample_ids`` (descriptor, label and id); returns how many were held."""
        gone = torch.isin(self.sample_ids, torch.as_tensor(sample_ids, dtype=torch.long))
        self.bank, self.labels, self.sample_ids = self.bank[~gone], self.labels[~gone], self.sample_ids[~gone]
        return int(gone.sum())

    @torch.no_grad()
    def nearest(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions in the bank (B, k) of each image's ``k`` nearest stored cases and their cosines (B, k), nearest first."""
        self._require_cases()
        cos = self.descriptors(images) @ self.bank.T  # (B, N)
        sim, index = cos.topk(min(self.k, len(self.labels)), dim=-1)
        return index, sim

    @torch.no_grad()
    def nearest_in_batches(self, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`nearest` for many images, ``batch_size`` at a time (the (B, N) similarity matrix stays small)."""
        found = [self.nearest(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        return torch.cat([index for index, _ in found]), torch.cat([sim for _, sim in found])

    @torch.no_grad()
    def vote(self, images: torch.Tensor, batch_size: int = 256, power: float | None = None) -> torch.Tensor:
        """Class distribution (B, num_classes) of each image's ``k`` nearest stored cases, weighted ``1 / distance ** power``
        (default: the calibrated ``self.power``; 1: scikit-learn's distance weights; larger: nearer cases count more, 0:
        every neighbour alike)."""
        return self.vote_of(*self.nearest_in_batches(images, batch_size), power=power)

    @torch.no_grad()
    def vote_of(self, index: torch.Tensor, sim: torch.Tensor, power: float | None = None) -> torch.Tensor:
        """The vote (B, num_classes) of neighbours found by :meth:`nearest` (positions and cosines, (B, k))."""
        power = float(self.power) if power is None else power
        distance = (1.0 - sim).clamp(min=0.0)
        # scikit-learn's "distance" weights: 1 / d, and an exact match (d = 0) takes the whole vote
        exact = distance <= EPS
        weights = torch.where(exact.any(-1, keepdim=True), exact.float(), distance.clamp(min=EPS) ** -power)
        v = torch.zeros(len(index), self.num_classes, device=weights.device).scatter_add_(1, self.labels[index], weights)
        return v / v.sum(-1, keepdim=True)

    @torch.no_grad()
    def calibrate(
        self, probabilities: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, grid=VOTE_WEIGHT_GRID, powers=DISTANCE_POWER_GRID
    ) -> tuple[float, dict[float, dict]]:
        """Choose the weight ``w`` and the distance power together on labelled held-out cases: the model's probabilities
        (N, C) for ``images`` (N, C_in, *spatial). Why the power too: with a few stored cases per class, the 1 / d vote of
        k = 10 is nearly flat; validation chose 2-4 on brain MRI (docs/design.md, Session 16).

        Sets ``self.weight`` and ``self.power``; returns ``(w, {w: {"acc", "nll"}})`` at the chosen power (highest
        accuracy, ties: the lower log loss)."""
        found = self.nearest_in_batches(images)  # the neighbours do not depend on the power: searched once
        candidates = ((p, lambda p=p: (probabilities, self.vote_of(*found, power=p))) for p in powers)
        power, best, scores = choose_vote(candidates, torch.as_tensor(labels), grid)
        self.weight.fill_(best)
        self.power.fill_(power)
        return best, scores

    def forward(self, probabilities: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The model's probabilities (B, C) for ``images`` fused with their vote: (B, C), rows sum to 1."""
        return self.fuse_found(probabilities, *self.nearest_in_batches(images))

    def fuse_found(self, probabilities: torch.Tensor, index: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
        """As :meth:`forward`, from neighbours already found by :meth:`nearest` (positions and cosines, (B, k)), for
        callers that also show them."""
        return fused(probabilities, self.vote_of(index, sim), float(self.weight))
