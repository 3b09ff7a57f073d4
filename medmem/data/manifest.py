"""Manifests: MONAI datalist JSON files with leakage-free splits and nested regime subsets.

A manifest looks like::

    {"name": "pbc_blood_cells_96", "classes": ["basophil", ...], "seed": 0,
     "split_policy": "...", "training": [{"image": "<rel path or npz ref>", "label": 0,
     "sha256": "...", "group": "..."}, ...], "validation": [...], "test": [...],
     "regimes": {"1": [indices into training], "3": [...], ...}, "removed": [{"image", "reason"}]}

Leakage rules, applied before anything is split:
- identical content (same sha256) with different labels: every copy is removed (label conflict);
- identical content in two official splits: the training/validation copy is removed, test wins;
- identical content within one split: the first copy (by path) is kept;
- a group (e.g. an LC25000 source tile) never straddles splits.
Regimes are nested (each a subset of the next), stratified, every class present at least once, and a
deterministic function of the seed and the content hashes (not of file order).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from medmem.atomic import write_json_atomic  # noqa: F401  (re-exported for callers)
from medmem.data.readers import ImageLoadError, is_dicom_file, make_npz_ref, parse_npz_ref

SPLITS = ("training", "validation", "test")
REGIMES = (1, 3, 10, 30, 100)
SPLIT_PRIORITY = {"test": 0, "validation": 1, "training": 2}  # who keeps a cross-split duplicate
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ".nii", ".gz", ".npy"}


class ManifestError(ValueError):
    """Input that cannot become a manifest; the message lists every offending file."""


@dataclass
class Candidate:
    """One image before hashing: where it is, its class name, optional group and official split."""

    image: str  # relative to the data root, or an npz reference
    label_name: str
    group: str | None = None
    split: str | None = None
    sha256: str = ""


@dataclass
class BuildReport:
    removed: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- hashing
def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_array(array: np.ndarray) -> str:
    """Hash of an array's content (dtype and shape included, so equal bytes of other shape differ)."""
    digest = hashlib.sha256(f"{array.dtype}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def is_hidden(name: str) -> bool:
    """Hidden files and macOS debris (``._foo``, ``.DS_Store``, ``.DS_123.jpg``)."""
    return name.startswith(".") or name.startswith("._") or name == "Thumbs.db"


def verify_image(path: Path) -> None:
    """Decode the file fully; raise :class:`ImageLoadError` naming it if that fails."""
    if path.stat().st_size == 0:
        raise ImageLoadError(path, "file is empty (0 bytes)")
    suffix = path.suffix.lower()
    if suffix in {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"} and not is_dicom_file(path):
        from PIL import Image

        try:
            with Image.open(path) as im:
                im.load()
        except Exception as exc:
            raise ImageLoadError(path, f"cannot decode image ({exc})") from exc
        return
    from medmem.data.transforms import LoadMedicalImage

    LoadMedicalImage()(str(path))


# ------------------------------------------------------------------------------------------ scanning
def scan_class_folders(data_root: Path, folder: str, split: str | None = None) -> list[Candidate]:
    """Every image under ``data_root/folder/<class>/``; class = sub-folder name.

    Raises :class:`ManifestError` for an empty class folder.
    """
    base = data_root / folder
    if not base.is_dir():
        raise ManifestError(f"{base}: not a folder")
    found: list[Candidate] = []
    empty: list[str] = []
    for class_dir in sorted(p for p in base.iterdir() if p.is_dir() and not is_hidden(p.name)):
        files = [
            p
            for p in sorted(class_dir.rglob("*"))
            if p.is_file() and not any(is_hidden(part) for part in p.relative_to(class_dir).parts)
        ]
        if not files:
            empty.append(str(class_dir))
        for p in files:
            found.append(Candidate(str(p.relative_to(data_root)), class_dir.name, split=split))
    if empty:
        raise ManifestError("empty class folder(s): " + ", ".join(empty))
    return found


def scan_csv(data_root: Path, csv_path: Path) -> list[Candidate]:
    """Rows ``path,label[,group][,split]`` (header required); paths relative to the CSV's folder."""
    rows = list(csv.DictReader(open(csv_path, newline="")))
    missing = {"path", "label"} - set(rows[0].keys() if rows else [])
    if missing:
        raise ManifestError(f"{csv_path}: missing column(s) {sorted(missing)}")
    base = csv_path.parent.relative_to(data_root) if csv_path.is_relative_to(data_root) else csv_path.parent
    out = []
    for row in rows:
        if is_hidden(Path(row["path"]).name):
            continue
        out.append(Candidate(str(Path(base) / row["path"]), row["label"], row.get("group") or None, row.get("split") or None))
    return out


def scan_npz(data_root: Path, npz_rel: str, class_names: list[str] | None = None) -> tuple[list[Candidate], dict]:
    """MedMNIST-style npz: ``{train,val,test}_{images,labels}``; images are hashed here."""
    path = data_root / npz_rel
    split_names = {"train": "training", "val": "validation", "test": "test"}
    try:
        archive = np.load(path)
    except Exception as exc:
        raise ManifestError(f"{path}: cannot read npz ({exc})") from exc
    candidates, hashes = [], {}
    with archive:
        for short, split in split_names.items():
            for key in (f"{short}_images", f"{short}_labels"):
                if key not in archive.files:
                    raise ManifestError(f"{path}: npz has no array '{key}' (it has {sorted(archive.files)})")
            images, labels = archive[f"{short}_images"], archive[f"{short}_labels"].reshape(-1)
            if len(images) != len(labels):
                raise ManifestError(f"{path}: {short}_images and {short}_labels differ in length")
            for i, (img, lab) in enumerate(zip(images, labels)):
                ref = make_npz_ref(npz_rel, short, i)
                name = class_names[int(lab)] if class_names else str(int(lab))
                candidates.append(Candidate(ref, name, split=split, sha256=sha256_array(img)))
    return candidates, hashes


def hash_candidates(data_root: Path, candidates: list[Candidate], verify: bool = True) -> tuple[list[Candidate], list[dict]]:
    """Fill ``sha256`` (and decode each file if ``verify``); unreadable files go to the error list."""
    ok, errors = [], []
    for cand in candidates:
        if cand.sha256:
            ok.append(cand)
            continue
        path = data_root / cand.image
        try:
            if not path.exists():
                raise ImageLoadError(path, "file not found")
            if verify:
                verify_image(path)
            cand.sha256 = sha256_file(path)
            ok.append(cand)
        except (ImageLoadError, OSError) as exc:
            errors.append({"image": cand.image, "reason": str(exc)})
    return ok, errors


# ------------------------------------------------------------------------------------------ cleaning
def remove_duplicates(candidates: list[Candidate], report: BuildReport) -> list[Candidate]:
    """Apply the duplicate rules of the module docstring; removals are recorded in ``report``."""
    by_hash: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        by_hash[c.sha256].append(c)
    kept = []
    for sha, copies in by_hash.items():
        if len(copies) == 1:
            kept.append(copies[0])
            continue
        labels = {c.label_name for c in copies}
        if len(labels) > 1:
            for c in copies:
                report.removed.append({"image": c.image, "sha256": sha, "reason": f"identical content carries conflicting labels {sorted(labels)}"})
            continue
        copies = sorted(copies, key=lambda c: (SPLIT_PRIORITY.get(c.split or "training", 2), c.image))
        keeper = copies[0]
        kept.append(keeper)
        for c in copies[1:]:
            where = "another split" if (c.split or "") != (keeper.split or "") else "the same split"
            report.removed.append({"image": c.image, "sha256": sha, "reason": f"exact duplicate of {keeper.image} ({where})"})
    return sorted(kept, key=lambda c: c.image)


def _stable_key(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()


def split_by_group(
    candidates: list[Candidate], fractions: dict[str, float], seed: int
) -> dict[str, list[Candidate]]:
    """Stratified split of whole groups (a candidate without a group is its own group).

    Within each class, groups are ordered by a seeded hash and handed to the split whose share of
    that class is furthest below its target fraction, so class proportions follow ``fractions``
    while no group lands in two splits.
    """
    units: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        units[c.group or f"sha:{c.sha256}"].append(c)
    by_class: dict[str, list[str]] = defaultdict(list)
    for unit_id, members in units.items():
        majority = Counter(m.label_name for m in members).most_common(1)[0][0]
        by_class[majority].append(unit_id)
    out: dict[str, list[Candidate]] = {s: [] for s in fractions}
    for label in sorted(by_class):
        unit_ids = sorted(by_class[label], key=lambda u: _stable_key(seed, u))
        total = sum(len(units[u]) for u in unit_ids)
        filled = {s: 0 for s in fractions}
        for u in unit_ids:
            target = min(fractions, key=lambda s: (filled[s] / total - fractions[s], -fractions[s]))
            filled[target] += len(units[u])
            out[target].extend(units[u])
    return {s: sorted(v, key=lambda c: c.image) for s, v in out.items()}


def make_regimes(training: list[dict], seed: int, regimes: Iterable[int] = REGIMES) -> dict[str, list[int]]:
    """Nested, stratified subsets of ``training`` as sorted index lists, keyed by percent.

    Per class the entries are ordered by a seeded hash of their content; regime p takes the first
    ``ceil(p% of the class)`` (at least one), so each regime is a prefix of, hence inside, the next.
    """
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, entry in enumerate(training):
        by_class[entry["label"]].append(i)
    ordered = {lab: sorted(idx, key=lambda i: _stable_key(seed, training[i]["sha256"])) for lab, idx in by_class.items()}
    out = {}
    for pct in sorted(regimes):
        chosen = []
        for lab, idx in ordered.items():
            chosen.extend(idx[: max(1, math.ceil(len(idx) * pct / 100.0))])
        out[str(pct)] = sorted(chosen)
    return out


def _entry(c: Candidate, class_index: dict[str, int]) -> dict:
    entry = {"image": c.image, "label": class_index[c.label_name], "sha256": c.sha256}
    if c.group:
        entry["group"] = c.group
    return entry


def build_manifest(
    name: str,
    candidates: list[Candidate],
    *,
    fractions: dict[str, float] | None = None,
    validation_fraction: float = 0.1,
    seed: int = 0,
    class_names: list[str] | None = None,
    report: BuildReport | None = None,
) -> dict:
    """Turn hashed candidates into a manifest dict.

    If every candidate has an official ``split``, it is kept (a missing validation split is carved
    from training by group, ``validation_fraction`` of it); otherwise ``fractions`` (e.g.
    ``{"training": .7, "validation": .1, "test": .2}``) drives a stratified group split.
    """
    report = report or BuildReport()
    classes = class_names or sorted({c.label_name for c in candidates})
    class_index = {n: i for i, n in enumerate(classes)}
    unknown = {c.label_name for c in candidates} - set(class_index)
    if unknown:
        raise ManifestError(f"labels not among the classes: {sorted(unknown)}")
    official = all(c.split for c in candidates)
    if not official and fractions is None:
        raise ManifestError("no official split and no split fractions given")
    # groups must not straddle official splits either: a group seen in a higher-priority split wins
    if official:
        group_home: dict[str, str] = {}
        for c in sorted(candidates, key=lambda c: SPLIT_PRIORITY[c.split]):
            if c.group:
                group_home.setdefault(c.group, c.split)
        moved = [c for c in candidates if c.group and group_home[c.group] != c.split]
        for c in moved:
            report.removed.append({"image": c.image, "sha256": c.sha256, "reason": f"group {c.group} also in {group_home[c.group]}"})
        candidates = [c for c in candidates if c not in moved]
    candidates = remove_duplicates(candidates, report)
    if official:
        splits = {s: [c for c in candidates if c.split == s] for s in SPLITS}
        if not splits["validation"]:
            carved = split_by_group(splits["training"], {"training": 1 - validation_fraction, "validation": validation_fraction}, seed)
            splits["training"], splits["validation"] = carved["training"], carved["validation"]
        policy = "official split kept; cross-split duplicates removed from the training side"
    else:
        splits = split_by_group(candidates, fractions, seed)
        policy = "stratified split by " + ("group" if any(c.group for c in candidates) else "content hash") + f" {fractions}"
    manifest = {
        "name": name,
        "classes": classes,
        "seed": seed,
        "split_policy": policy + "; exact duplicates (sha256) removed before splitting",
    }
    for s in SPLITS:
        manifest[s] = [_entry(c, class_index) for c in splits[s]]
    manifest["regimes"] = make_regimes(manifest["training"], seed)
    manifest["removed"] = sorted(report.removed, key=lambda r: r["image"])
    return manifest


# ---------------------------------------------------------------------------------------- checking
def check_manifest(manifest: dict, data_root: Path, verify_hashes: bool = True) -> list[str]:
    """Every problem found, as readable lines (empty list: the manifest is valid)."""
    problems: list[str] = []
    n_classes = len(manifest.get("classes", []))
    for key in ("name", "classes", *SPLITS, "regimes"):
        if key not in manifest:
            problems.append(f"missing key '{key}'")
    if problems:
        return problems
    seen_hash: dict[str, str] = {}
    seen_group: dict[str, str] = {}
    npz_cache: dict[tuple[str, str], np.ndarray] = {}
    for split in SPLITS:
        for entry in manifest[split]:
            image, sha = entry["image"], entry.get("sha256", "")
            if not (0 <= int(entry.get("label", -1)) < n_classes):
                problems.append(f"{split}: {image}: label {entry.get('label')} not in 0..{n_classes - 1}")
            if sha in seen_hash and seen_hash[sha] != split:
                problems.append(f"leakage: {image} ({split}) has the same content as an entry in {seen_hash[sha]}")
            seen_hash.setdefault(sha, split)
            group = entry.get("group")
            if group:
                if group in seen_group and seen_group[group] != split:
                    problems.append(f"leakage: group {group} is in both {seen_group[group]} and {split}")
                seen_group.setdefault(group, split)
            if not verify_hashes:
                continue
            try:
                if ".npz#" in image:
                    rel, short, index = parse_npz_ref(image)
                    key = (rel, f"{short}_images")
                    if key not in npz_cache:
                        with np.load(data_root / rel) as archive:
                            npz_cache[key] = archive[key[1]]
                    actual = sha256_array(npz_cache[key][index])
                else:
                    path = data_root / image
                    if not path.is_file():
                        problems.append(f"{split}: {image}: file not found under {data_root}")
                        continue
                    actual = sha256_file(path)
            except Exception as exc:
                problems.append(f"{split}: {image}: cannot read ({exc})")
                continue
            if actual != sha:
                problems.append(f"{split}: {image}: content hash differs from the manifest")
    regimes = manifest["regimes"]
    n_train = len(manifest["training"])
    previous: set[int] | None = None
    for pct in sorted(regimes, key=float):
        idx = set(regimes[pct])
        if any(not 0 <= i < n_train for i in idx):
            problems.append(f"regime {pct}: index out of range")
            continue
        if previous is not None and not previous <= idx:
            problems.append(f"regime {pct}: does not contain the smaller regime")
        present = {manifest["training"][i]["label"] for i in idx}
        if len(present) != n_classes:
            problems.append(f"regime {pct}: classes missing: {sorted(set(range(n_classes)) - present)}")
        previous = idx
    return problems


# ------------------------------------------------------------------------------------------- file io
def load_manifest(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read manifest ({exc})") from exc
    if "classes" not in manifest or "training" not in manifest:
        raise ManifestError(f"{path}: not a medmem manifest (needs 'classes' and 'training')")
    return manifest
