"""Yes/no bundle settings typed on the command line arrive as text; 'false' must mean false."""

from __future__ import annotations

from pathlib import Path

import fire
import pytest
from monai.bundle import ConfigParser
from monai.transforms import RandAdjustContrastd, RandRotate90d, RandScaleIntensityd

from medmem.flags import as_flag

CONFIGS = Path(__file__).resolve().parent.parent / "bundles" / "movit_classification" / "configs"


def test_the_command_line_hands_the_config_text():
    # the premise: monai.bundle's Fire parser turns `--rotate90 false` into the string 'false', which Python calls true
    parsed = fire.Fire(lambda **kw: kw, command=["--rotate90", "false"])
    assert parsed == {"rotate90": "false"} and bool(parsed["rotate90"])


@pytest.mark.parametrize("value,expected", [(True, True), (False, False), ("false", False), ("False", False), ("true", True), ("0", False), (1, True), ("off", False)])
def test_as_flag_reads_text_and_bools(value, expected):
    assert as_flag(value) is expected


@pytest.mark.parametrize("value", ["flase", 2, None, [], "maybe"])
def test_as_flag_refuses_anything_else_naming_the_setting(value):
    with pytest.raises(ValueError, match="rotate90 must be true or false"):
        as_flag(value, "rotate90")


def parsed(overrides: dict, key: str):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update(overrides)
    return parser.get_parsed_content(key)


def test_train_chain_follows_text_flags():
    kinds = lambda chain: {type(t).__name__ for t in chain.transforms}  # noqa: E731
    on = kinds(parsed({"rotate90": "true", "intensity_augment": "true"}, "train#preprocessing"))
    off = kinds(parsed({"rotate90": "false", "intensity_augment": "false"}, "train#preprocessing"))
    assert RandRotate90d.__name__ in on and RandRotate90d.__name__ not in off
    # the jitter's gamma and per-channel gain
    assert {RandAdjustContrastd.__name__, RandScaleIntensityd.__name__} <= on
    assert not {RandAdjustContrastd.__name__, RandScaleIntensityd.__name__} & off


def test_resume_false_as_text_disables_the_resume(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "checkpoint_epoch=1.pt").write_bytes(b"")
    overrides = {"output_dir": str(tmp_path), "resume": "false"}
    assert parsed(overrides, "resume_handler#_disabled_") is True
    assert parsed({**overrides, "resume": "true"}, "resume_handler#_disabled_") is False
