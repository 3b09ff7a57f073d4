"""The MONAI Label app's memory model without a server (it imports medmem only): its 8-view checks, as predict's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medmem.engine.summarize import write_model_card
from medmem.networks import MemoryViT

REPO = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("medmem_label_memory_model", REPO / "apps" / "medmem_label" / "lib" / "memory_model.py")
memory_model = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(memory_model)


def model_dir(folder: Path, spatial_dims: int, augmentation: dict | None) -> Path:
    torch.manual_seed(0)
    net = MemoryViT(1, 16, 8, 2, hidden_size=16, mlp_dim=32, num_layers=1, num_heads=2, memory_k=2, spatial_dims=spatial_dims)
    shape = (4, 1) + (16,) * spatial_dims
    net.write_memory(torch.randn(shape), torch.arange(4), torch.tensor([0, 1, 0, 1]))
    folder.mkdir()
    torch.save(net.state_dict(), folder / "model_full.pt")
    write_model_card(net, str(folder / "model.json"), ["a", "b"], {}, None, augmentation)
    return folder


def test_the_app_refuses_8_views_of_a_volume_model_by_its_file(tmp_path):
    folder = model_dir(tmp_path / "volume", 3, {"rotate90": True})
    with pytest.raises(ValueError, match=r"volume/model_full\.pt: averaging over flips and turns needs a 2D model with square input"):
        memory_model.MemoryModel(str(folder), dihedral=True)  # the app's default: refused at start
    served = memory_model.MemoryModel(str(folder))  # one view by default: served; a request for 8 views is refused
    with pytest.raises(ValueError, match=r"volume/model_full\.pt: averaging over flips and turns"):
        served.predict(str(tmp_path / "any.nii.gz"), dihedral=True)


def test_the_app_warns_once_for_a_model_trained_without_turns(tmp_path, capsys):
    folder = model_dir(tmp_path / "no_turns", 2, {"rotate90": False, "intensity": False})
    image = tmp_path / "cell.png"
    Image.fromarray((np.random.default_rng(0).random((20, 20)) * 255).astype(np.uint8)).save(image)
    served = memory_model.MemoryModel(str(folder))
    one = served.predict(str(image))
    assert one["views"] == 1 and "right-angle turns" not in capsys.readouterr().err
    eight = [served.predict(str(image), dihedral=True) for _ in range(2)]
    assert [e["views"] for e in eight] == [8, 8] and eight[0]["probabilities"] != pytest.approx(one["probabilities"], abs=1e-6)
    assert capsys.readouterr().err.count("no_turns/model_full.pt: the model card says this network was not trained with right-angle turns") == 1
