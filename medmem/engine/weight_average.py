"""An exponential moving average of the network's weights, validated and kept as the best model in place of the raw ones.

Why not ignite's ``EMAHandler``: it keeps a deep copy of the network and copies its buffers into the copy every step.
A memory ViT's external memory is a set of buffers that grow (capacity doubles) beside a Python row index, so the copy
would read a stale or mis-shaped memory. Here the average is a shadow of the parameters only. For validation it is
copied into the network itself, which keeps reading the live memory, and the trained weights come back before training
goes on. The best-model saver, which runs inside validation, therefore saves the averaged weights with the live memory.
"""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events

from medmem.engine.handlers import unwrap


class WeightAverage:
    """Keep ``average <- d * average + (1 - d) * weights`` after every training step, with ``d = min(decay, (1 + t) /
    (10 + t))`` at update ``t`` (the usual warm-up, so that the first steps' random-ish weights fade fast), and put the
    average into the network while ``evaluator`` runs.

    Args:
        network: the trained network (a DistributedDataParallel wrapper is looked through). Every floating-point
            parameter is averaged; buffers (the external memory, normalisation statistics) stay the live ones.
        evaluator: the validation engine that should see the averaged weights.
        decay: ``d`` in [0, 1). 0 turns the average off: the handler then does nothing and keeps no copy.

    Attach it to the trainer after the ``ValidationHandler``: the trained weights come back at the end of the trainer's
    epoch, after validation (and the best-model save inside it) has run, and before the epoch's checkpoint is written.
    ``state_dict`` carries the average so that a resumed run continues it; put the handler in the last checkpoint.
    """

    def __init__(self, network: torch.nn.Module, evaluator: Engine, decay: float = 0.0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"weight average decay must be in [0, 1) (0: off), got {decay}")
        self.network, self.evaluator, self.decay = network, evaluator, float(decay)
        self.updates = 0
        self.averages: dict[str, torch.Tensor] = {}
        self._trained: dict[str, torch.Tensor] | None = None  # the trained weights while the average is swapped in

    def _parameters(self) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in unwrap(self.network).named_parameters() if p.is_floating_point()}

    def attach(self, trainer: Engine) -> None:
        if self.decay == 0.0:
            return
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.restore)
        trainer.add_event_handler(Events.COMPLETED, self.restore)
        self.evaluator.add_event_handler(Events.STARTED, self.swap_in)

    @torch.no_grad()
    def update(self, engine: Engine | None = None) -> None:
        """Fold the trained weights into the average (the first call copies them). Restores them first, so that a
        validation run inside the step (an iteration-level ValidationHandler) never folds the average into itself."""
        self.restore()
        params = self._parameters()
        if not self.averages:
            self.averages = {name: p.detach().clone() for name, p in params.items()}
        else:
            d = min(self.decay, (1 + self.updates) / (10 + self.updates))
            for name, p in params.items():
                self.averages[name].lerp_(p.detach(), 1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def swap_in(self, engine: Engine | None = None) -> None:
        """Put the average into the network, keeping the trained weights aside (nothing before the first update)."""
        if self._trained is not None or not self.averages:
            return
        params = self._parameters()
        self._trained = {name: p.detach().clone() for name, p in params.items()}
        for name, p in params.items():
            p.copy_(self.averages[name])

    @torch.no_grad()
    def restore(self, engine: Engine | None = None) -> None:
        """Put the trained weights back (nothing if they are in place)."""
        if self._trained is None:
            return
        for name, p in self._parameters().items():
            p.copy_(self._trained[name])
        self._trained = None

    def state_dict(self) -> dict:
        """``{"decay", "updates", "averages": {parameter name: tensor}}``."""
        return {"decay": self.decay, "updates": self.updates, "averages": {k: v.clone() for k, v in self.averages.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue a saved average. Its parameter names must be the network's (an average of another network is refused)."""
        averages = state_dict["averages"]
        if averages and set(averages) != set(self._parameters()):
            raise ValueError("the saved weight average is of another network (its parameter names differ)")
        device = next(iter(self._parameters().values())).device
        self.updates = int(state_dict["updates"])
        self.averages = {k: v.to(device) for k, v in averages.items()}
