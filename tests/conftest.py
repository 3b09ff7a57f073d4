"""Shared fixtures: the data root, real DICOM / NIfTI files that ship in PyPI packages, and the study's scripts."""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest

warnings.filterwarnings("ignore", message=".*nvImageCodec.*")


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared datasets (``MEDMEM_DATA_ROOT``); tests that need them skip, loudly, without it."""
    root = os.environ.get("MEDMEM_DATA_ROOT")
    if not root or not Path(root).is_dir():
        pytest.skip("MEDMEM_DATA_ROOT is not set to the shared datasets folder")
    return Path(root).resolve()


def dicom_file(name: str) -> str:
    """A real DICOM file from pydicom's test files or pydicom-data, never downloaded."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.fail(f"{name} is not installed (pydicom-data is a test dependency)")
    return str(path)


def pydicom_test_dir() -> Path:
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files"


def nifti_file(name: str) -> str:
    from nibabel.testing import data_path

    return os.path.join(data_path, name)


def benchmark_script(name: str) -> ModuleType:
    """``benchmarks/regimes/<name>.py`` imported as a module (its folder on the path, for the scripts it imports)."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks" / "regimes"
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
