"""How each shipped manifest is built from the shared datasets (one recipe per dataset)."""

from __future__ import annotations

from pathlib import Path

from medmem.data.manifest import (
    BuildReport,
    ManifestError,
    build_manifest,
    hash_candidates,
    scan_class_folders,
    scan_csv,
    scan_npz,
)
from medmem.data.near_duplicates import DEFAULT_THRESHOLD, group_near_duplicates

DEFAULT_FRACTIONS = {"training": 0.7, "validation": 0.1, "test": 0.2}
RECIPES = ("pbc_blood_cells_96", "brain_tumor_mri", "brain_tumor_mri_training", "pneumoniamnist", "lc25000_64")


def build_recipe(name: str, data_root: Path, seed: int = 0) -> tuple[dict, BuildReport]:
    """Build the manifest of a shipped dataset; unreadable files raise with the full list."""
    report = BuildReport()
    class_names = None
    fractions: dict[str, float] | None = DEFAULT_FRACTIONS
    near_duplicates = False  # group re-saved copies and adjacent slices where no patient ids exist
    if name == "pbc_blood_cells_96":
        candidates = scan_class_folders(data_root, name)
    elif name == "brain_tumor_mri":
        candidates = scan_class_folders(data_root, f"{name}/Training", "training") + scan_class_folders(
            data_root, f"{name}/Testing", "test"
        )
        fractions = None
    elif name == "brain_tumor_mri_training":
        # the Training folder alone, split 70/10/20: the official Testing folder is drawn unlike it
        # (benchmarks/results/split_shift_brain_tumor_mri.md); near-duplicates are grouped below
        candidates = scan_class_folders(data_root, "brain_tumor_mri/Training")
        near_duplicates = True
    elif name == "pneumoniamnist":
        class_names = ["normal", "pneumonia"]
        candidates, _ = scan_npz(data_root, f"{name}/pneumoniamnist.npz", class_names)
        fractions = None
    elif name == "lc25000_64":
        candidates = scan_csv(data_root, data_root / name / "groups.csv")
    else:
        raise ManifestError(f"no recipe for dataset {name!r}; known: {', '.join(RECIPES)}")
    candidates, report.errors = hash_candidates(data_root, candidates)
    if report.errors:
        lines = "\n".join(f"  {e['image']}: {e['reason']}" for e in report.errors)
        raise ManifestError(f"{len(report.errors)} unreadable file(s):\n{lines}")
    grouped = group_near_duplicates(data_root, candidates) if near_duplicates else 0
    manifest = build_manifest(name, candidates, fractions=fractions, seed=seed, class_names=class_names, report=report)
    if grouped:
        manifest["split_policy"] += (
            f"; {grouped} images in near-duplicate groups (64 px grey thumbnails closer than "
            f"{DEFAULT_THRESHOLD} mean absolute difference: re-saved copies, adjacent slices) kept within one split"
        )
    return manifest, report


def build_generic(
    data_root: Path,
    *,
    name: str,
    folder: str | None = None,
    npz: str | None = None,
    csv_path: Path | None = None,
    fractions: dict[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    skip_unreadable: bool = False,
) -> tuple[dict, BuildReport]:
    """A manifest from a class-per-folder tree, a MedMNIST npz, or a CSV of path,label[,group]."""
    report = BuildReport()
    if sum(x is not None for x in (folder, npz, csv_path)) != 1:
        raise ManifestError("give exactly one of folder, npz, csv")
    if folder is not None:
        candidates = scan_class_folders(data_root, folder)
    elif npz is not None:
        candidates, _ = scan_npz(data_root, npz)
    else:
        candidates = scan_csv(data_root, Path(csv_path))
    candidates, report.errors = hash_candidates(data_root, candidates)
    if report.errors and not skip_unreadable:
        lines = "\n".join(f"  {e['image']}: {e['reason']}" for e in report.errors)
        raise ManifestError(f"{len(report.errors)} unreadable file(s):\n{lines}")
    manifest = build_manifest(name, candidates, fractions=fractions, seed=seed, report=report)
    if report.errors:
        manifest["unreadable"] = report.errors
    return manifest, report
