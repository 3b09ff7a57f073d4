"""Bad input gives a clear error that names the file and says what is wrong."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medmem.data import ImageLoadError, LoadMedicalImage
from medmem.data.manifest import ManifestError, hash_candidates, scan_class_folders, scan_npz
from tests.conftest import dicom_file


def make_class_tree(tmp_path: Path, data_root: Path) -> Path:
    root = tmp_path / "root"
    for cls in ("a", "b"):
        (root / "ds" / cls).mkdir(parents=True)
        for src in sorted((data_root / "pbc_blood_cells_96/basophil").iterdir())[:3] if cls == "a" else sorted((data_root / "pbc_blood_cells_96/platelet").iterdir())[:3]:
            shutil.copy(src, root / "ds" / cls / src.name)
    return root


def test_truncated_jpeg_is_reported_by_name(tmp_path, data_root):
    root = make_class_tree(tmp_path, data_root)
    victim = next((root / "ds/a").iterdir())
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    candidates = scan_class_folders(root, "ds")
    ok, errors = hash_candidates(root, candidates)
    assert len(ok) == 5 and len(errors) == 1
    assert errors[0]["image"] == str(victim.relative_to(root))
    assert victim.name in errors[0]["reason"] and "cannot decode" in errors[0]["reason"]
    with pytest.raises(ImageLoadError, match=victim.name):
        LoadMedicalImage()(str(victim))


def test_resource_fork_and_hidden_files_are_skipped(tmp_path, data_root):
    root = make_class_tree(tmp_path, data_root)
    (root / "ds/a/._BA_fake.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (root / "ds/a/.DS_Store").write_bytes(b"junk")
    names = {Path(c.image).name for c in scan_class_folders(root, "ds")}
    assert "._BA_fake.jpg" not in names and ".DS_Store" not in names and len(names) == 6


def test_empty_class_folder_is_an_error(tmp_path, data_root):
    root = make_class_tree(tmp_path, data_root)
    (root / "ds/c").mkdir()
    with pytest.raises(ManifestError, match=r"empty class folder.*ds/c"):
        scan_class_folders(root, "ds")


def test_dicom_without_pixel_data(tmp_path):
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    del ds.PixelData
    path = tmp_path / "no_pixels.dcm"
    ds.save_as(path)
    with pytest.raises(ImageLoadError, match=r"no_pixels\.dcm: DICOM file has no pixel data"):
        LoadMedicalImage()(str(path))


def test_zero_byte_nifti(tmp_path):
    path = tmp_path / "empty.nii.gz"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"empty\.nii\.gz: cannot load image"):
        LoadMedicalImage()(str(path))


def test_npz_missing_key(tmp_path):
    np.savez(tmp_path / "broken.npz", train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.zeros((2, 1)))
    with pytest.raises(ManifestError, match=r"broken\.npz: npz has no array 'val_images'"):
        scan_npz(tmp_path, "broken.npz")
    with pytest.raises(ImageLoadError, match=r"broken\.npz: npz has no array 'val_images'"):
        LoadMedicalImage()(f"{tmp_path}/broken.npz#val/0")
