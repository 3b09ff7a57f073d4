"""Loaders on real files: DICOM variants, series, NIfTI, TIFF, JPEG, npz; shapes, ranges, orientation."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from pydicom.pixels import apply_modality_lut

from medmem.data import LoadMedicalImage
from medmem.data.readers import DICOM_SAFE_TAGS
from tests.conftest import dicom_file, nifti_file, pydicom_test_dir

load = LoadMedicalImage()


def reference_pixels(path: str) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return apply_modality_lut(ds.pixel_array, ds).astype(np.float32)


def test_ct_small_applies_rescale_and_keeps_orientation():
    path = dicom_file("CT_small.dcm")
    image = load(path)
    assert image.shape == (1, 128, 128)
    assert image.dtype == torch.float32
    expected = reference_pixels(path)
    ds = pydicom.dcmread(path)
    assert float(ds.RescaleIntercept) != 0 or float(ds.RescaleSlope) != 1  # the test means something
    np.testing.assert_array_equal(image[0].numpy(), expected)  # rows stay rows: no transpose
    assert image.min() < 0  # Hounsfield units, not raw stored values


@pytest.mark.parametrize(
    "name", ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"]
)
def test_mr_small_transfer_syntaxes_decode_identically(name):
    reference = load(dicom_file("MR_small.dcm"))
    image = load(dicom_file(name))
    assert image.shape == (1, 64, 64)
    torch.testing.assert_close(image, reference)


def test_multiframe_is_a_volume_of_frames():
    path = dicom_file("emri_small.dcm")
    image = load(path)
    assert image.shape == (1, 10, 64, 64)
    np.testing.assert_array_equal(image[0].numpy(), reference_pixels(path))


def test_rgb_ultrasound_is_channel_first():
    path = dicom_file("US1_UNCR.dcm")
    image = load(path)
    ds = pydicom.dcmread(path)
    assert image.shape == (3, ds.Rows, ds.Columns)
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), ds.pixel_array.astype(np.float32))


def test_monochrome1_is_inverted_to_monochrome2():
    path = str(pydicom_test_dir() / "dicomdirtests/77654033/CR1/6154")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    raw = reference_pixels(path)
    image = load(path)[0].numpy()
    np.testing.assert_allclose(image, raw.max() + raw.min() - raw)
    # the brightest raw pixel (dark on screen for MONOCHROME1) becomes the darkest
    assert image.flat[raw.argmax()] == image.min()


def test_series_folder_is_sorted_into_a_volume():
    folder = pydicom_test_dir() / "dicomdirtests/77654033/CT2"
    files = sorted(p for p in folder.iterdir() if p.is_file())
    volume = load(str(folder))
    assert volume.shape == (1, len(files), 16, 16)
    datasets = [pydicom.dcmread(p) for p in files]
    normal = np.cross(*np.asarray(datasets[0].ImageOrientationPatient, float).reshape(2, 3))
    positions = sorted((float(np.dot(normal, ds.ImagePositionPatient)), str(p)) for ds, p in zip(datasets, files))
    for z, (_, path) in enumerate(positions):
        np.testing.assert_array_equal(volume[0, z].numpy(), reference_pixels(path))


def test_dicom_metadata_carries_no_patient_tags():
    image = load(dicom_file("CT_small.dcm"))
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    assert str(ds.PatientName)  # the file does hold a name
    text = repr(dict(image.meta))
    assert str(ds.PatientName) not in text and str(ds.PatientID) not in text
    assert not {k for k in image.meta if k[:1].isupper()} - set(DICOM_SAFE_TAGS) - {"WindowCenter", "WindowWidth"}


def test_nifti_3d_and_4d():
    import nibabel as nib

    vol = load(nifti_file("anatomical.nii"))  # big-endian int16 on disk
    assert vol.shape == (1, 33, 41, 25)
    np.testing.assert_array_equal(vol[0].numpy(), np.asarray(nib.load(nifti_file("anatomical.nii")).dataobj))
    four_d = load(nifti_file("example4d.nii.gz"))
    assert four_d.shape == (2, 128, 96, 24)  # the 4th axis becomes channels


def test_tiff_tile_and_jpeg(data_root):
    tile = load(str(data_root / "nct_crc_he_100k_tiles/ADI-AAQEFMRI.tif"))
    assert tile.shape == (3, 224, 224) and tile.dtype == torch.uint8
    from PIL import Image

    jpeg_path = data_root / "pbc_blood_cells_96/basophil/BA_100102.jpg"
    jpeg = load(str(jpeg_path))
    expected = np.asarray(Image.open(jpeg_path).convert("RGB"))
    np.testing.assert_array_equal(jpeg.permute(1, 2, 0).numpy(), expected)  # (C, rows, cols)


def test_npz_reference(data_root):
    image = load(f"{data_root}/pneumoniamnist/pneumoniamnist.npz#test/5")
    with np.load(data_root / "pneumoniamnist/pneumoniamnist.npz") as archive:
        expected = archive["test_images"][5]
    assert image.shape == (1, 28, 28)
    np.testing.assert_array_equal(image[0].numpy(), expected)
