"""MONAI transform chains that turn any supported file into a model-ready tensor.

Evaluation chain (shared by training, evaluation and prediction)::

    load (npz / DICOM / PNG-JPEG-TIFF / NIfTI)  -> channel-first float
    scale intensity to [0, 1]                     (8-bit: /255; else window or robust percentiles)
    match spatial dims                            (a 3D volume given to a 2D model: pick a slice)
    match channels                                (grey <-> RGB, RGBA -> RGB)
    resize to the model's size

Training adds augmentation after it; augmentation is never part of evaluation.
"""

from __future__ import annotations

import os
from typing import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.data import ImageReader, MetaTensor, PILReader
from monai.transforms import (
    Compose,
    CopyItemsd,
    EnsureTyped,
    LoadImage,
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandCoarseDropoutd,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandSpatialCropd,
    Resized,
    ThresholdIntensityd,
    Transform,
)

from medmem.data.readers import DicomReader, ImageLoadError, NativeEndianNibabelReader, NpzReader
from medmem.flags import as_flag

SLICE_POLICIES = ("middle", "max_area")


RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
NIFTI_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".img")


class LoadMedicalImage(Transform):
    """Load one file (or npz reference / DICOM folder) as a channel-first ``MetaTensor``.

    The reader is chosen up front (npz reference, NIfTI, raster image, DICOM by suffix, magic or
    folder) and handed to MONAI's ``LoadImage``, so a reader's own error reaches the user instead of
    MONAI's generic "no suitable reader". Any failure becomes :class:`ImageLoadError` naming the file.
    The native dtype is kept (8-bit images stay uint8) for :func:`scale_to_unit`.
    """

    def __init__(self) -> None:
        self.loader = LoadImage(image_only=True, ensure_channel_first=True, dtype=None)
        self.npz, self.dicom = NpzReader(), DicomReader()
        self.nifti, self.raster = NativeEndianNibabelReader(), PILReader(reverse_indexing=False)

    def choose_reader(self, path: str) -> ImageReader:
        name = path.lower()
        if self.npz.verify_suffix(path):
            return self.npz
        if name.endswith(NIFTI_SUFFIXES):
            return self.nifti
        if name.endswith(RASTER_SUFFIXES):
            return self.raster
        if self.dicom.verify_suffix(path):
            return self.dicom
        raise ImageLoadError(path, "unsupported file type (expected DICOM, NIfTI, PNG/JPEG/TIFF or an npz reference)")

    def __call__(self, path: str) -> MetaTensor:
        path = str(path)
        try:
            if ".npz#" not in path and not os.path.exists(path):
                raise ImageLoadError(path, "file not found")
            image = self.loader(path, reader=self.choose_reader(path))
        except ImageLoadError:
            raise
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ImageLoadError(path, f"cannot load image ({reason})") from exc
        if image.numel() == 0:
            raise ImageLoadError(path, "image is empty")
        return image


class LoadMedicalImaged(MapTransform):
    """Dictionary version of :class:`LoadMedicalImage`."""

    def __init__(self, keys: KeysCollection) -> None:
        super().__init__(keys)
        self.loader = LoadMedicalImage()

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


def scale_to_unit(image: torch.Tensor, window: tuple[float, float] | None = None) -> torch.Tensor:
    """Intensities to [0, 1].

    - 8-bit images (PNG/JPEG/npz): divided by 255, so brightness is comparable across images;
    - with ``window=(centre, width)`` (e.g. CT): clipped to the window;
    - otherwise (DICOM, NIfTI): robust min-max between the 0.5th and 99.5th percentiles.
    """
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    x = image.float()
    if window is not None:
        centre, width = window
        low, high = centre - width / 2.0, centre + width / 2.0
    else:
        flat = x.flatten()
        if flat.numel() > 1_000_000:  # quantile() has a size limit; a strided sample is enough
            flat = flat[:: flat.numel() // 1_000_000 + 1]
        low, high = torch.quantile(flat, 0.005).item(), torch.quantile(flat, 0.995).item()
    if high <= low:
        return torch.zeros_like(x)
    return ((x - low) / (high - low)).clamp_(0.0, 1.0)


class ScaleIntensityToUnitd(MapTransform):
    """Dictionary transform around :func:`scale_to_unit`; ``window`` is ``(centre, width)`` or None."""

    def __init__(self, keys: KeysCollection, window: Sequence[float] | None = None) -> None:
        super().__init__(keys)
        self.window = tuple(window) if window is not None else None

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = scale_to_unit(d[key], self.window)
        return d


def match_spatial_dims(image: torch.Tensor, spatial_dims: int, slice_policy: str = "middle") -> torch.Tensor:
    """Bring a channel-first image to ``spatial_dims`` spatial axes.

    Singleton axes are squeezed first. A 3D volume (C, S, H, W) given to a 2D model is reduced to one
    slice along the first spatial axis: ``middle`` or ``max_area`` (the slice with most signal above
    the volume mean, a cheap guess at the most informative one). A 2D image given to a 3D model gets
    a singleton depth axis.
    """
    if slice_policy not in SLICE_POLICIES:
        raise ValueError(f"slice_policy must be one of {SLICE_POLICIES}, got {slice_policy!r}")
    x = image
    while x.ndim - 1 > spatial_dims and 1 in x.shape[1:]:
        axis = 1 + list(x.shape[1:]).index(1)
        x = x.squeeze(axis)
    if x.ndim - 1 == spatial_dims:
        return x
    if x.ndim - 1 == 3 and spatial_dims == 2:
        if slice_policy == "middle":
            index = x.shape[1] // 2
        else:
            index = int((x > x.mean()).float().sum(dim=(0, 2, 3)).argmax())
        return x[:, index]
    if x.ndim - 1 == 2 and spatial_dims == 3:
        return x.unsqueeze(1)
    raise ValueError(f"image of shape {tuple(image.shape)} cannot be made {spatial_dims}D")


class MatchSpatialDimsd(MapTransform):
    def __init__(self, keys: KeysCollection, spatial_dims: int, slice_policy: str = "middle") -> None:
        super().__init__(keys)
        self.spatial_dims, self.slice_policy = spatial_dims, slice_policy

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = match_spatial_dims(d[key], self.spatial_dims, self.slice_policy)
        return d


def match_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """Channel-first image to ``channels`` channels: grey->RGB repeats, RGB->grey takes luminance,
    RGBA drops alpha."""
    c = image.shape[0]
    if c == 4:
        image, c = image[:3], 3
    if c == channels:
        return image
    if c == 1 and channels == 3:
        return image.repeat(3, *([1] * (image.ndim - 1)))
    if c == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype).view(3, *([1] * (image.ndim - 1)))
        return (image * weights).sum(0, keepdim=True)
    raise ValueError(f"cannot map {c} channels to {channels}")


class MatchChannelsd(MapTransform):
    def __init__(self, keys: KeysCollection, channels: int) -> None:
        super().__init__(keys)
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = match_channels(d[key], self.channels)
        return d


def eval_transforms(
    image_size: int | Sequence[int],
    in_channels: int,
    spatial_dims: int = 2,
    window: Sequence[float] | None = None,
    slice_policy: str = "middle",
    keys: Sequence[str] = ("image",),
) -> Compose:
    """Deterministic chain: file -> float tensor (in_channels, *image_size) in [0, 1]."""
    size = (image_size,) * spatial_dims if isinstance(image_size, int) else tuple(image_size)
    return Compose(
        [
            LoadMedicalImaged(keys),
            ScaleIntensityToUnitd(keys, window=window),
            MatchSpatialDimsd(keys, spatial_dims, slice_policy),
            MatchChannelsd(keys, in_channels),
            Resized(keys, spatial_size=size, mode="area" if spatial_dims == 2 else "trilinear"),
            EnsureTyped(keys, dtype=torch.float32, track_meta=False),
        ]
    )


def intensity_augmentations(keys: Sequence[str] = ("image",)) -> list:
    """Intensity and colour jitter for images in [0, 1]: a gamma in 0.7-1.4 (exposure, window) and a
    per-channel gain of up to 15 percent (stain or staining-protocol colour cast on RGB), clipped back
    to [0, 1]. Without it a network learns the training site's exact colours: an 8 percent colour cast
    takes the PBC networks trained without it to near chance (``benchmarks/regimes/shift_robustness.py``)."""
    return [
        RandAdjustContrastd(keys, prob=0.5, gamma=(0.7, 1.4)),
        RandScaleIntensityd(keys, factors=0.15, prob=0.5, channel_wise=True),
        ThresholdIntensityd(keys, threshold=1.0, above=False, cval=1.0),
        ThresholdIntensityd(keys, threshold=0.0, above=True, cval=0.0),
    ]


def flips_and_turns(keys: KeysCollection, spatial_dims: int = 2, rotate90: bool = True) -> list:
    """A random flip along each spatial axis, then (2D, ``rotate90``) a random right-angle turn."""
    augs: list = [RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(spatial_dims)]
    if as_flag(rotate90, "rotate90") and spatial_dims == 2:
        augs.append(RandRotate90d(keys, prob=0.5, max_k=3))
    return augs


def augmentations(spatial_dims: int = 2, keys: Sequence[str] = ("image",), rotate90: bool = True, intensity: bool = False) -> list:
    """Label-preserving augmentation for training only: flips, right-angle turns, small affine, and with
    ``intensity`` the gamma and colour jitter of :func:`intensity_augmentations`."""
    intensity = as_flag(intensity, "intensity_augment")
    augs = flips_and_turns(keys, spatial_dims, rotate90)
    augs.append(
        RandAffined(
            keys,
            prob=0.5,
            rotate_range=[0.2] * (1 if spatial_dims == 2 else 3),
            scale_range=[0.1] * spatial_dims,
            padding_mode="border",
        )
    )
    return augs + (intensity_augmentations(keys) if intensity else [])


def train_transforms(
    image_size: int | Sequence[int],
    in_channels: int,
    spatial_dims: int = 2,
    window: Sequence[float] | None = None,
    rotate90: bool = True,
    keys: Sequence[str] = ("image",),
    intensity: bool = False,
) -> Compose:
    """Evaluation chain followed by augmentation (``intensity``: also gamma and colour jitter)."""
    base = eval_transforms(image_size, in_channels, spatial_dims, window, keys=keys)
    return Compose(list(base.transforms) + augmentations(spatial_dims, keys, rotate90, intensity))


def view_augmentations(image_size: Sequence[int], spatial_dims: int, key: str) -> list:
    """One random view for self-supervised pre-training: a crop of 40-100 percent of each side resized back, flips,
    right-angle turns, and the gamma and colour jitter. Stronger than the label-preserving training augmentation
    because instance discrimination learns exactly what the views do not share."""
    min_side = [max(1, int(0.4 * s)) for s in image_size]
    return [
        RandSpatialCropd(key, roi_size=min_side, random_size=True),
        Resized(key, spatial_size=tuple(image_size), mode="area" if spatial_dims == 2 else "trilinear"),
        *flips_and_turns(key, spatial_dims),
        *intensity_augmentations((key,)),
    ]


def two_view_transforms(image_size: int | Sequence[int], in_channels: int, spatial_dims: int = 2, window: Sequence[float] | None = None) -> Compose:
    """Evaluation chain, then two independent random views: ``image`` and ``image_2``, each (in_channels, *image_size).

    Each view has its own transforms, so their random draws are independent (a MONAI dictionary transform over two
    keys would crop and flip both alike)."""
    size = (image_size,) * spatial_dims if isinstance(image_size, int) else tuple(image_size)
    base = eval_transforms(size, in_channels, spatial_dims, window)
    return Compose(
        list(base.transforms)
        + [CopyItemsd("image", times=1, names=["image_2"])]
        + view_augmentations(size, spatial_dims, "image")
        + view_augmentations(size, spatial_dims, "image_2")
        + [EnsureTyped(("image", "image_2"), dtype=torch.float32, track_meta=False)]
    )


def consistency_view_transforms(
    image_size: int | Sequence[int], in_channels: int, spatial_dims: int = 2, window: Sequence[float] | None = None, rotate90: bool = True
) -> Compose:
    """Evaluation chain, then two independent views of one unlabelled image for consistency training: ``image`` the weak
    view (the training augmentation: flips, turns, small affine) whose prediction labels it, and ``image_strong`` the
    strong view the network must then give that label (flips, turns, the gamma and colour jitter, and one blanked
    square of a quarter to a half of each side: cutout, as FixMatch's strong view has). Both (in_channels, *image_size)."""
    size = (image_size,) * spatial_dims if isinstance(image_size, int) else tuple(image_size)
    base = eval_transforms(size, in_channels, spatial_dims, window)
    strong = "image_strong"
    return Compose(
        list(base.transforms)
        + [CopyItemsd("image", times=1, names=[strong])]
        + augmentations(spatial_dims, ("image",), rotate90)
        + flips_and_turns(strong, spatial_dims, rotate90)
        + intensity_augmentations((strong,))
        + [
            RandCoarseDropoutd(strong, holes=1, spatial_size=[max(1, s // 4) for s in size], max_spatial_size=[max(1, s // 2) for s in size], fill_value=0.5, prob=1.0),
            EnsureTyped(("image", strong), dtype=torch.float32, track_meta=False),
        ]
    )
