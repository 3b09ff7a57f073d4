"""The weight average (bundle ``weight_average_decay``): what it averages, what validation sees, what training keeps."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events

from medmem.engine import WeightAverage
from medmem.engine.handlers import unwrap
from medmem.networks import MemoryViT


def averaged_run(net: torch.nn.Module, decay: float, state: dict | None = None):
    """A trainer that moves every weight by +1 per step, validation after every epoch (as the bundle's ValidationHandler
    runs it) by an evaluator that records the first weight it sees, and a WeightAverage attached after it (as in the
    bundle), continuing ``state`` if given. Returns (trainer, average, the weights validation saw)."""
    seen: list[torch.Tensor] = []
    evaluator = Engine(lambda e, b: seen.append(next(net.parameters()).detach().clone()))
    trainer = Engine(lambda e, b: [p.data.add_(1.0) for p in net.parameters()])
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0]))
    average = WeightAverage(net, evaluator, decay=decay)
    if state is not None:
        average.load_state_dict(state)
    average.attach(trainer)
    return trainer, average, seen


def expected_average(start: torch.Tensor, steps: int, decay: float) -> torch.Tensor:
    """The average by hand: weights start + 1, start + 2, ... after each step, the warm-up d_t = min(decay, (1+t)/(10+t))."""
    avg = start + 1.0
    for t in range(1, steps):
        d = min(decay, (1 + t) / (10 + t))
        avg = d * avg + (1 - d) * (start + 1.0 + t)
    return avg


def test_validation_sees_the_average_and_training_keeps_its_own_weights():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    start = net.weight.detach().clone()
    trainer, average, seen = averaged_run(net, 0.5)
    after_epoch: list[torch.Tensor] = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: after_epoch.append(net.weight.detach().clone()))
    trainer.run([0] * 4, max_epochs=2)
    assert average.updates == 8
    for epoch in (1, 2):
        steps = 4 * epoch
        assert torch.allclose(seen[epoch - 1], expected_average(start, steps, 0.5), atol=1e-6)  # validation: the average
        assert torch.allclose(after_epoch[epoch - 1], start + steps)  # the epoch's checkpoint: the trained weights
    assert not torch.allclose(seen[1], start + 8)  # the average is not the weights
    assert torch.allclose(net.weight, start + 8) and torch.allclose(average.averages["weight"], seen[1])


def test_decay_zero_is_off_and_a_bad_decay_is_refused():
    net = torch.nn.Linear(3, 2)
    start = net.weight.detach().clone()
    trainer, average, seen = averaged_run(net, 0.0)
    trainer.run([0] * 3, max_epochs=1)
    assert average.averages == {} and average.updates == 0
    assert torch.allclose(seen[0], start + 3)  # validation sees the trained weights
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"decay must be in \[0, 1\)"):
            WeightAverage(net, Engine(lambda e, b: None), decay=bad)


def test_a_resumed_average_continues_where_it_stopped():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    start = net.weight.detach().clone()
    trainer, first, _ = averaged_run(net, 0.9)
    trainer.run([0] * 3, max_epochs=1)
    saved = first.state_dict()
    # a new run from the saved weights and average: 3 more steps give the same average as 6 steps in one run
    trainer2, resumed, seen2 = averaged_run(net, 0.9, saved)
    trainer2.run([0] * 3, max_epochs=1)
    assert resumed.updates == 6
    assert torch.allclose(seen2[0], expected_average(start, 6, 0.9), atol=1e-5)
    other = WeightAverage(torch.nn.Linear(3, 3, bias=False), Engine(lambda e, b: None), decay=0.9)
    with pytest.raises(ValueError, match="another network"):
        other.load_state_dict(saved)


def test_the_memory_vit_validates_averaged_weights_against_its_live_memory():
    """The external memory is buffers: validation reads the memory written by the trained weights, never a copy."""
    torch.manual_seed(0)
    net = MemoryViT(in_channels=1, img_size=16, patch_size=8, num_classes=2, hidden_size=16, mlp_dim=32, num_layers=1, num_heads=2,
                    memory_k=4, stem="patch")  # fmt: skip
    images, labels, ids = torch.randn(6, 1, 16, 16), torch.tensor([0, 1, 0, 1, 0, 1]), torch.arange(6)
    optimiser = torch.optim.SGD(net.parameters(), lr=0.5)
    readings: list[tuple[dict, int]] = []

    def evaluate(engine, batch):
        memory = unwrap(net).memory_layers()[0].memory
        readings.append(({k: v.detach().clone() for k, v in net.named_parameters()}, memory.num_written))

    evaluator = Engine(evaluate)

    def step(engine, batch):
        net.train()
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(images, sample_ids=ids), labels).backward()
        optimiser.step()
        net.commit_memory(ids, labels)

    trainer = Engine(step)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0]))
    average = WeightAverage(net, evaluator, decay=0.8)
    average.attach(trainer)
    trainer.run([0] * 3, max_epochs=1)
    params, written = readings[0]
    assert written == 6  # the live memory, written during training
    assert all(torch.equal(params[k], average.averages[k]) for k in params)
    trained = dict(net.named_parameters())
    assert any(not torch.equal(params[k], trained[k]) for k in params)  # and training kept its own weights
