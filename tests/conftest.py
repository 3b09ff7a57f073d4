"""Shared fixtures: the data root and real DICOM / NIfTI files that ship in PyPI packages."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

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
