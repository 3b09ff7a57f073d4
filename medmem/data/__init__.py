"""Data layer: readers, MONAI transform chains, manifests and datalists."""

from medmem.data.datalist import class_names, load_datalist
from medmem.data.manifest import check_manifest, load_manifest
from medmem.data.readers import DicomReader, ImageLoadError, NpzReader
from medmem.data.transforms import (
    LoadMedicalImage,
    LoadMedicalImaged,
    consistency_view_transforms,
    eval_transforms,
    train_transforms,
    two_view_transforms,
)

__all__ = [
    "DicomReader",
    "ImageLoadError",
    "LoadMedicalImage",
    "LoadMedicalImaged",
    "NpzReader",
    "check_manifest",
    "class_names",
    "eval_transforms",
    "load_datalist",
    "load_manifest",
    "train_transforms",
    "two_view_transforms",
    "consistency_view_transforms",
]
