"""MONAI ``ImageReader`` classes for the formats MONAI's stock readers do not cover the way we need.

- :class:`NpzReader` reads one image out of a MedMNIST-style ``.npz`` by reference
  ``<file>.npz#<split>/<index>`` (arrays are cached per process; no per-image files exist).
- :class:`DicomReader` reads DICOM single-frame, multi-frame and series folders with pydicom. Unlike
  MONAI's ``PydicomReader`` it inverts MONOCHROME1, handles colour and palette images, and copies only
  an allow-list of non-identifying tags into the metadata (never patient name, id, birth date...).

Both return arrays with spatial axes in file order: (rows, cols) for 2D, (slices, rows, cols) for 3D,
so that a displayed array looks like the image on a viewer.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from monai.data import ImageReader, NibabelReader
from monai.utils import ensure_tuple

NPZ_REF_SEP = "#"
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")

# Tags that say how to read the pixels and nothing about the patient. Everything else is dropped.
DICOM_SAFE_TAGS = (
    "Modality",
    "PhotometricInterpretation",
    "SeriesInstanceUID",
    "Rows",
    "Columns",
    "BitsStored",
)


class ImageLoadError(RuntimeError):
    """A file could not be turned into an image; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


# ----------------------------------------------------------------------------------------------- npz
def make_npz_ref(npz_path: str, split: str, index: int) -> str:
    """``'pneumoniamnist/pneumoniamnist.npz#train/12'``: a reference to one image in an npz."""
    return f"{npz_path}{NPZ_REF_SEP}{split}/{index}"


def parse_npz_ref(ref: str) -> tuple[str, str, int]:
    """Inverse of :func:`make_npz_ref`: ``(npz_path, split, index)``."""
    path, _, inner = str(ref).rpartition(NPZ_REF_SEP)
    split, _, index = inner.partition("/")
    if not path.endswith(".npz") or not split or not index.isdigit():
        raise ValueError(f"{ref}: not an npz reference of the form <file>.npz#<split>/<index>")
    return path, split, int(index)


@functools.lru_cache(maxsize=16)
def load_npz_array(npz_path: str, key: str) -> np.ndarray:
    """The whole array ``key`` of an npz, cached (npz members are decompressed on every access)."""
    try:
        with np.load(npz_path) as archive:
            if key not in archive.files:
                raise ImageLoadError(npz_path, f"npz has no array '{key}' (it has {sorted(archive.files)})")
            return archive[key]
    except ImageLoadError:
        raise
    except Exception as exc:  # zip or pickle errors: name the file
        raise ImageLoadError(npz_path, f"cannot read npz ({exc})") from exc


class NpzReader(ImageReader):
    """Reads ``<file>.npz#<split>/<index>`` from ``<split>_images`` in a MedMNIST-style npz."""

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        names = ensure_tuple(filename)
        return len(names) == 1 and f".npz{NPZ_REF_SEP}" in str(names[0])

    def read(self, data: Sequence[str] | str, **kwargs: Any) -> tuple[np.ndarray, str]:
        ref = str(ensure_tuple(data)[0])
        path, split, index = parse_npz_ref(ref)
        images = load_npz_array(path, f"{split}_images")
        if index >= len(images):
            raise ImageLoadError(ref, f"index {index} out of range: '{split}_images' holds {len(images)}")
        return images[index], ref

    def get_data(self, img: tuple[np.ndarray, str]) -> tuple[np.ndarray, dict]:
        array, _ = img
        meta = {"original_channel_dim": -1 if array.ndim == 3 else float("nan"), "spatial_shape": array.shape[:2]}
        return array, meta


# --------------------------------------------------------------------------------------------- DICOM
def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when the file has a DICOM suffix or the ``DICM`` magic at byte 128."""
    p = Path(path)
    if p.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(p, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _dicom_pixels(ds: Any, path: str) -> np.ndarray:
    """Pixels of one dataset as float32 in display convention (higher = brighter).

    Applies the modality LUT (rescale slope/intercept), palette colour, and MONOCHROME1 inversion.
    Output: (rows, cols), (frames, rows, cols), or with a trailing RGB axis.
    """
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageLoadError(path, "DICOM file has no pixel data")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # decoder missing, truncated data...
        raise ImageLoadError(path, f"cannot decode DICOM pixel data ({exc})") from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        return arr.astype(np.float32)
    if photometric.startswith("MONOCHROME"):
        arr = apply_modality_lut(arr, ds).astype(np.float32)
        if photometric == "MONOCHROME1":  # low values are bright: flip to MONOCHROME2
            arr = arr.max() + arr.min() - arr
        return arr
    return arr.astype(np.float32)  # RGB / YBR (pydicom converts YBR to RGB)


def _slice_position(ds: Any) -> float:
    """Position of a slice along its normal (falls back to InstanceNumber)."""
    ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if ipp is not None and iop is not None and len(iop) == 6:
        normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
        return float(np.dot(normal, np.asarray(ipp, float)))
    return float(ds.get("InstanceNumber", 0) or 0)


class DicomReader(ImageReader):
    """DICOM files and series folders through pydicom.

    A folder is read as one series: its DICOM files (DICOMDIR excluded) are grouped by
    SeriesInstanceUID and sorted along the slice normal; a folder holding several series is an error
    (pick one with ``series_uid``).
    """

    def __init__(self, series_uid: str | None = None):
        super().__init__()
        self.series_uid = series_uid

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        names = ensure_tuple(filename)
        return len(names) == 1 and (os.path.isdir(str(names[0])) or is_dicom_file(str(names[0])))

    def read(self, data: Sequence[str] | str, **kwargs: Any) -> list:
        import pydicom

        path = str(ensure_tuple(data)[0])
        if not os.path.isdir(path):
            try:
                return [pydicom.dcmread(path)]
            except Exception as exc:
                raise ImageLoadError(path, f"not a readable DICOM file ({exc})") from exc
        series: dict[str, list] = {}
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if name.startswith(".") or name.upper().startswith("DICOMDIR") or not os.path.isfile(full):
                continue
            try:
                ds = pydicom.dcmread(full)
            except Exception:
                continue  # non-DICOM files beside a series are ignored
            series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
        if not series:
            raise ImageLoadError(path, "folder holds no DICOM files")
        if self.series_uid is not None:
            if self.series_uid not in series:
                raise ImageLoadError(path, f"series {self.series_uid} not in folder")
            return sorted(series[self.series_uid], key=_slice_position)
        if len(series) > 1:
            raise ImageLoadError(path, f"folder holds {len(series)} series; choose one with series_uid")
        return sorted(next(iter(series.values())), key=_slice_position)

    def get_data(self, img: list) -> tuple[np.ndarray, dict]:
        path = str(getattr(img[0], "filename", "<dicom>"))
        frames = [_dicom_pixels(ds, str(getattr(ds, "filename", path))) for ds in img]
        if len(frames) == 1:
            array = frames[0]
        else:
            shapes = {f.shape for f in frames}
            if len(shapes) != 1:
                raise ImageLoadError(path, f"series slices differ in shape: {sorted(shapes)}")
            array = np.stack(frames, axis=0)
        first = img[0]
        is_colour = array.ndim >= 3 and array.shape[-1] in (3, 4) and str(
            first.get("PhotometricInterpretation", "")
        ) not in ("MONOCHROME1", "MONOCHROME2")
        meta: dict[str, Any] = {key: str(first.get(key)) for key in DICOM_SAFE_TAGS if key in first}
        meta["original_channel_dim"] = -1 if is_colour else float("nan")
        spacing = [float(s) for s in first.get("PixelSpacing", [1.0, 1.0])]
        if array.ndim - int(is_colour) == 3:
            spacing = [float(first.get("SliceThickness", 1.0) or 1.0)] + spacing
        meta["spacing"] = np.asarray(spacing)
        meta["spatial_shape"] = np.asarray(array.shape[: array.ndim - int(is_colour)])
        for key in ("WindowCenter", "WindowWidth"):
            if key in first:
                value = first.get(key)
                meta[key] = float(value[0] if hasattr(value, "__len__") and not isinstance(value, str) else value)
        return array, meta


# --------------------------------------------------------------------------------------------- NIfTI
class NativeEndianNibabelReader(NibabelReader):
    """MONAI's ``NibabelReader`` with big-endian data (e.g. old Analyze-style NIfTI) made native-endian,
    which torch requires."""

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        array, meta = super().get_data(img)
        if array.dtype.byteorder not in ("=", "|"):
            array = array.astype(array.dtype.newbyteorder("="))
        return array, meta
