"""Evaluation and training chains: size, channels, value range, 3D-to-2D policy, no augmentation in eval."""

from __future__ import annotations

import torch
from monai.transforms import Compose

from medmem.data.transforms import (
    augmentations,
    eval_transforms,
    match_channels,
    match_spatial_dims,
    scale_to_unit,
    train_transforms,
)
from tests.conftest import dicom_file


def test_eval_chain_grey_dicom_to_rgb_model():
    out = eval_transforms(32, 3)({"image": dicom_file("CT_small.dcm")})["image"]
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0 and float(out.max()) > 0.9
    torch.testing.assert_close(out[0], out[1])


def test_eval_chain_window_clips_to_range():
    out = eval_transforms(64, 1, window=(40, 400))({"image": dicom_file("CT_small.dcm")})["image"]
    assert out.shape == (1, 64, 64)
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0


def test_volume_to_2d_model_takes_middle_slice():
    data = {"image": dicom_file("emri_small.dcm")}
    out = eval_transforms(64, 1, spatial_dims=2)(data)["image"]
    assert out.shape == (1, 64, 64)
    volume = eval_transforms(64, 1, spatial_dims=3)(data)["image"]
    assert volume.shape == (1, 64, 64, 64)


def test_match_spatial_dims_and_channels():
    vol = torch.zeros(1, 5, 8, 8)
    vol[0, 3] = 1.0
    assert torch.equal(match_spatial_dims(vol, 2, "max_area"), vol[:, 3])
    assert match_spatial_dims(vol, 2, "middle").shape == (1, 8, 8)
    assert match_spatial_dims(torch.zeros(1, 8, 8, 1), 2).shape == (1, 8, 8)
    rgb = torch.rand(3, 4, 4)
    grey = match_channels(rgb, 1)
    torch.testing.assert_close(grey[0], 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])
    assert match_channels(torch.rand(4, 4, 4), 3).shape == (3, 4, 4)


def test_scale_to_unit_rules():
    assert torch.equal(scale_to_unit(torch.tensor([0, 255], dtype=torch.uint8)), torch.tensor([0.0, 1.0]))
    x = torch.arange(1000, dtype=torch.float32)
    y = scale_to_unit(x)
    assert float(y.min()) == 0.0 and float(y.max()) == 1.0 and 0.45 < float(y[500]) < 0.55


def test_train_chain_augments_but_eval_is_deterministic():
    data = {"image": dicom_file("CT_small.dcm")}
    chain = eval_transforms(32, 1)
    assert torch.equal(chain(dict(data))["image"], chain(dict(data))["image"])
    train = train_transforms(32, 1)
    train.set_random_state(0)
    outs = [train(dict(data))["image"] for _ in range(6)]
    assert all(o.shape == (1, 32, 32) for o in outs)
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])


def test_intensity_augmentation_is_opt_in_and_stays_in_unit_range():
    """Geometry keeps a flat colour exactly; the jitter casts a grey image's channels apart and clips to [0, 1]."""
    flat = {"image": torch.tensor([0.8, 0.5, 0.2]).view(3, 1, 1).expand(3, 16, 16).clone()}
    geometry = Compose(augmentations(2, rotate90=True))
    geometry.set_random_state(0)
    for _ in range(5):
        out = geometry(dict(flat))["image"]
        torch.testing.assert_close(out.mean(dim=(1, 2)), torch.tensor([0.8, 0.5, 0.2]))
    jitter = Compose(augmentations(2, rotate90=True, intensity=True))
    jitter.set_random_state(0)
    grey = torch.full((3, 16, 16), 0.95)  # equal channels: a gamma keeps them equal, only a per-channel gain parts them
    outs = [jitter({"image": grey.clone()})["image"] for _ in range(20)]
    assert all(float(o.min()) >= 0.0 and float(o.max()) <= 1.0 for o in outs)
    assert any(float(o.max()) == 1.0 for o in outs)  # a gain above 1/0.95 was clipped
    spreads = [float(o.mean(dim=(1, 2)).max() - o.mean(dim=(1, 2)).min()) for o in outs]
    assert sum(sp > 0.01 for sp in spreads) >= 3  # a colour cast in several draws
