"""medmem.engine.CheckpointSaver: the best model survives a resume and a crash during a save."""

from __future__ import annotations

import os

import pytest
import torch
from ignite.engine import Engine, Events

from medmem.engine import CheckpointSaver, checkpoint_interval, find_last_checkpoint, objects_in_checkpoint


def validator(scores: list[float], model: torch.nn.Linear) -> Engine:
    """An evaluator stand-in: epoch e sets the model's bias to e and reports scores[e - 1] as its key metric."""
    engine = Engine(lambda e, batch: None)
    engine.state.best_metric, engine.state.best_metric_epoch = -1, -1

    @engine.on(Events.EPOCH_COMPLETED)
    def score(e: Engine) -> None:
        model.bias.data.fill_(float(e.state.epoch))
        e.state.metrics["acc"] = scores[e.state.epoch - 1]

    return engine


def best_saver(folder, model) -> CheckpointSaver:
    return CheckpointSaver(str(folder), {"model": model}, save_key_metric=True, key_metric_name="acc", key_metric_filename="model_full.pt")


def saved_bias(folder) -> float:
    return float(torch.load(folder / "model_full.pt", weights_only=True)["bias"][0])


def test_record_carries_the_best_score_across_a_resume(tmp_path):
    model = torch.nn.Linear(2, 1)
    first = best_saver(tmp_path, model)
    engine = validator([0.5, 0.8, 0.6], model)
    first.attach(engine)
    engine.run([0], max_epochs=3)
    assert saved_bias(tmp_path) == 2.0  # epoch 2 scored best
    record = first.state_dict()
    assert [score for score, _ in record["_saved"]] == [0.8]

    resumed = best_saver(tmp_path, model)  # a new process after --resume
    engine = validator([0.7, 0.7, 0.7], model)
    resumed.attach(engine)
    resumed.load_state_dict(record)
    engine.run([0], max_epochs=3)
    assert saved_bias(tmp_path) == 2.0  # 0.7 < 0.8: the best model is kept

    fresh = best_saver(tmp_path, model)  # what the bundle did before: no record, the worse model replaced it
    engine = validator([0.7], model)
    fresh.attach(engine)
    engine.run([0], max_epochs=1)
    assert saved_bias(tmp_path) == 1.0


def test_a_crash_while_saving_leaves_the_previous_best_whole(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 1)
    saver = best_saver(tmp_path, model)
    engine = validator([0.5, 0.9], model)
    saver.attach(engine)
    real_save = torch.save

    def save_half_then_die(obj, f, *args, **kwargs):
        if engine.state.epoch == 2:
            if isinstance(f, (str, os.PathLike)):
                f = open(f, "wb")  # noqa: SIM115 (a save in place, as MONAI's would be)
            f.write(b"PK\x03\x04 half a zip")
            f.flush()
            raise OSError("disk full")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_half_then_die)
    with pytest.raises(OSError, match="disk full"):
        engine.run([0], max_epochs=2)
    assert saved_bias(tmp_path) == 1.0  # MONAI's non-atomic write would have left the half file here


def test_objects_in_checkpoint_drops_what_an_older_checkpoint_lacks(tmp_path):
    model = torch.nn.Linear(2, 1)
    path = tmp_path / "checkpoint_epoch=1.pt"
    torch.save({"model": model.state_dict()}, path)
    objects = {"model": model, "best_model_saver": best_saver(tmp_path, model)}
    with pytest.warns(UserWarning, match="holds no best_model_saver"):
        assert list(objects_in_checkpoint(str(path), objects)) == ["model"]
    assert objects_in_checkpoint(None, objects) is objects  # not resuming: nothing is read


def last_checkpoint_saver(folder, model, interval: int) -> CheckpointSaver:
    """As train.json's last_checkpoint_saver: several objects, so the files are named checkpoint_epoch=N.pt."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return CheckpointSaver(str(folder), {"model": model, "optimizer": optimizer}, save_interval=interval, n_saved=1, epoch_level=True)


@pytest.mark.parametrize("epochs, saved", [(7, [3, 6, 7]), (6, [3, 6]), (2, [2])])
def test_an_interval_saver_also_saves_the_final_epoch_once(tmp_path, monkeypatch, epochs, saved):
    model = torch.nn.Linear(2, 1)
    engine = Engine(lambda e, batch: None)
    last_checkpoint_saver(tmp_path, model, interval=3).attach(engine)
    written = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (written.append(engine.state.epoch), real_save(obj, f, *a, **k)))
    engine.run([0], max_epochs=epochs)
    assert written == saved
    assert find_last_checkpoint(tmp_path) == str(tmp_path / f"checkpoint_epoch={epochs}.pt")  # a resume starts at the end
    assert len(list(tmp_path.glob("*.pt"))) == 1


@pytest.mark.parametrize("interval, val_interval", [(1, 1), (1, 8), (4, 8), (8, 8)])
def test_checkpoint_interval_accepts_divisors_of_the_validation_interval(interval, val_interval):
    assert checkpoint_interval(interval, val_interval) == interval


@pytest.mark.parametrize("interval, val_interval", [(2, 1), (3, 8), (16, 8), (0, 8)])
def test_checkpoint_interval_refuses_a_validation_between_checkpoints(interval, val_interval):
    with pytest.raises(ValueError, match=f"checkpoint_interval {interval} must be a positive divisor of val_interval {val_interval}"):
        checkpoint_interval(interval, val_interval)
