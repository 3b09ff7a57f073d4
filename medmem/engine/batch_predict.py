"""``medmem predict``: a trained deployable checkpoint over a folder tree of scans, with evidence.

Inputs: any mix of PNG/JPEG/TIFF, NIfTI (2D/3D), MedMNIST npz references and DICOM; single-frame
DICOM files of one SeriesInstanceUID in one folder form one study (a volume), a multi-frame file is
its own study. A volume given to a 2D model is reduced to one slice (``--slice-policy``).

Outputs in the output folder:
- ``predictions.jsonl`` and ``predictions.csv`` (written atomically at the end; while running, rows
  are appended per batch to part files, so an interrupted run keeps what it finished): input (relative path), series UID, predicted
  class, probabilities, memory reliance, familiarity and an out-of-distribution flag (familiarity
  below the threshold calibrated on the validation split by the summarise step), and the most
  similar training cases recalled from the memory or prototypes (id, case, class, and ``pseudo_label`` where a teacher
  network gave the class); with ``dihedral`` the probabilities are averaged over 8 flips and turns; with ``case_vote``
  (the bundle's ``models/case_vote.pt``) the probabilities are the network's fused with the case vote at its validated
  weight, and ``pixel_similar_cases`` (a pixel-space vote) or ``trunk_similar_cases`` (a vote in the pre-trained trunk's
  features) lists the training cases that voted (id, case, class, cosine);
- ``errors.csv``: inputs that could not be used, with the reason; the run goes on past them.
No DICOM tag other than the allow-listed, non-identifying ones is read into any output.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage

from medmem.atomic import atomic_path, write_text_atomic
from medmem.data.manifest import is_hidden
from medmem.data.readers import DicomReader, ImageLoadError, is_dicom_file
from medmem.data.transforms import LoadMedicalImage, match_channels, match_spatial_dims, scale_to_unit
from medmem.engine.case_vote import CASE_EVIDENCE_KEYS, load_case_vote_file
from medmem.engine.dihedral import dihedral_probabilities
from medmem.engine.explain import attention_grid, render_evidence, safe_name, write_index
from medmem.engine.predict import csv_text, describe_failure
from medmem.memory.case_vote import CaseVote

# what model.pt (the summarise step's deployable checkpoint) can run: its prototypes, or no memory at all
DEPLOYABLE_MEMORY_MODES = ("prototypes", "off")


@dataclass
class Study:
    """One prediction input: a file, or the files of one DICOM series."""

    key: str  # relative path shown in outputs (the folder for a series)
    path: str  # file, or folder of the series
    series_uid: str = ""
    files: list[str] = field(default_factory=list)


def discover_studies(inputs: list[str]) -> tuple[list[Study], list[list[str]]]:
    """Studies under the given files/folders, and ``[path, reason]`` rows for unreadable DICOM headers."""
    import pydicom

    studies: list[Study] = []
    errors: list[list[str]] = []
    series: dict[tuple[str, str], list[str]] = defaultdict(list)
    for given in map(Path, inputs):
        root = given if given.is_dir() else given.parent
        files = [given] if not given.is_dir() else [f for f in sorted(given.rglob("*")) if f.is_file() and not any(is_hidden(p) for p in f.relative_to(given).parts)]
        for f in files:
            rel = os.path.relpath(f, root) if given.is_dir() else f.name
            if f.name.upper().startswith("DICOMDIR"):
                continue
            if is_dicom_file(f):
                try:
                    header = pydicom.dcmread(f, stop_before_pixels=True)
                except Exception as exc:
                    errors.append([rel, f"not a readable DICOM file ({exc})"])
                    continue
                uid = str(header.get("SeriesInstanceUID", ""))
                frames = int(header.get("NumberOfFrames", 1) or 1)
                if uid and frames == 1:
                    series[(str(f.parent), uid)].append(rel)
                    continue
                studies.append(Study(rel, str(f), uid, [str(f)]))
            else:
                studies.append(Study(rel, str(f)))
        for (folder, uid), rels in list(series.items()):
            if len(rels) == 1:
                studies.append(Study(rels[0], str(root / rels[0]), uid, [str(root / rels[0])]))
            else:
                key = os.path.dirname(rels[0]) or "."
                studies.append(Study(f"{key}#{uid}", folder, uid, [str(root / r) for r in rels]))
            del series[(folder, uid)]
    return sorted(studies, key=lambda s: s.key), errors


class StudyLoader:
    """Study -> model-ready tensor (in_channels, *image_size), following the model card's input spec."""

    def __init__(self, image_size: list[int], in_channels: int, spatial_dims: int, slice_policy: str = "middle", window: tuple | None = None):
        self.size, self.channels, self.dims = list(image_size), in_channels, spatial_dims
        self.slice_policy, self.window = slice_policy, window
        self.file_loader = LoadMedicalImage()

    def load(self, study: Study) -> torch.Tensor:
        if len(study.files) > 1:  # a DICOM series: read the folder, that series only
            try:
                image = LoadImage(image_only=True, ensure_channel_first=True, dtype=None)(study.path, reader=DicomReader(series_uid=study.series_uid))
            except ImageLoadError:
                raise
            except Exception as exc:
                raise ImageLoadError(study.key, f"cannot read DICOM series ({str(exc).splitlines()[0]})") from exc
        else:
            image = self.file_loader(study.path)
        x = image.as_tensor() if isinstance(image, MetaTensor) else image
        x = scale_to_unit(x, self.window)
        x = match_spatial_dims(x, self.dims, self.slice_policy)
        x = match_channels(x, self.channels)
        mode = "area" if self.dims == 2 else "trilinear"
        return torch.nn.functional.interpolate(x[None].float(), size=self.size, mode=mode)[0]


class StudyDataset(torch.utils.data.Dataset):
    """Decoded studies for a DataLoader (decoding in worker processes): ``(index, tensor or None, error)``."""

    def __init__(self, studies: list[Study], loader: StudyLoader) -> None:
        self.studies, self.loader = studies, loader

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return i, self.loader.load(self.studies[i]), ""
        except Exception as exc:
            return i, None, describe_failure(exc)


def load_deployable(model_path: str, card_path: str | None = None) -> tuple[torch.nn.Module, dict]:
    """The network described by the model card (``<model>.json``) with the checkpoint's weights."""
    from medmem.networks import MemoryViT

    card_file = Path(card_path or str(model_path).rsplit(".", 1)[0] + ".json")
    if not card_file.exists():
        raise FileNotFoundError(f"{card_file}: model card not found (written by the bundle's summarize step)")
    card = json.loads(card_file.read_text())
    config = {k: v for k, v in card["network"].items()}
    network = MemoryViT(**config)
    network.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    network.eval()
    return network, card


def _evidence_rows(network: torch.nn.Module, card: dict, top: int) -> tuple[list[float], list[list[dict]], list[float]]:
    """Per sample of the last forward: memory reliance, the ``top`` most similar training cases, familiarity."""
    layers = network.memory_layers()
    if not layers or not layers[-1].evidence:
        return [], [], []
    ev = layers[-1].evidence
    weights, owners = ev["weights"], ev["sample_ids"]  # (B, H, k), (B, H, k, m)
    cases = card.get("training_cases", {})
    out = []
    for b in range(weights.shape[0]):
        score: dict[int, float] = defaultdict(float)
        w, o = weights[b], owners[b]
        members = (o >= 0).sum(-1).clamp(min=1)
        for h in range(w.shape[0]):
            for j in range(w.shape[1]):
                share = float(w[h, j]) / int(members[h, j])
                for sid in o[h, j].tolist():
                    if sid >= 0:
                        score[sid] += share
        best = sorted(score.items(), key=lambda kv: -kv[1])[:top]
        out.append([{**card_case(cases, sid), "weight": round(s, 4)} for sid, s in best])
    return [float(r) for r in ev["reliance"]], out, [float(f) for f in ev["familiarity"]]


def card_case(cases: dict[str, list], sid: int) -> dict:
    """One training case of the model card's ``training_cases`` as evidence: ``{sample_id, case, class, pseudo_label}``.
    Cards written before bundle 0.15.0 hold ``[case_id, class]`` only: their cases read as labelled by a person."""
    case_id, name, *rest = cases.get(str(sid), ["", ""])
    return {"sample_id": sid, "case": case_id, "class": name, "pseudo_label": bool(rest[0]) if rest else False}


def case_cell(case: dict) -> str:
    """A case in the CSV's evidence columns: ``sample_id:case:class``, with ``:pseudo-label`` where a teacher network,
    not a person, gave the class."""
    return f"{case['sample_id']}:{case['case']}:{case['class']}" + (":pseudo-label" if case.get("pseudo_label") else "")


def check_dihedral_model(cfg: dict, card: dict, model_path: str) -> None:
    """Refuse 8-view averaging for a model whose input a turn would not fit (3D, not square); warn when the model card says
    the network was not trained with right-angle turns (``augmentation.rotate90`` false), whose views it never saw."""
    size = list(cfg["img_size"])
    if cfg.get("spatial_dims", 2) != 2 or len(size) != 2 or size[0] != size[1]:
        raise ValueError(f"{model_path}: averaging over flips and turns needs a 2D model with square input, this one takes {size}")
    if (card.get("augmentation") or {}).get("rotate90") is False:
        print(f"warning: {model_path}: the model card says this network was not trained with right-angle turns; "
              "its turned views may not mean what the image means (e.g. a chest X-ray's left and right)", file=sys.stderr)  # fmt: skip


def voted_case_rows(vote: CaseVote, cases: dict[str, dict], index: torch.Tensor, sims: torch.Tensor, top: int) -> list[list[dict]]:
    """Per image: its ``top`` nearest training cases in the case vote's space (pixels or trunk), nearest first, from the positions and
    cosines (B, k) that ``vote.nearest`` found (the same search the fused vote reads)."""
    rows = []
    for positions, cosines in zip(index.tolist(), sims.tolist()):
        found = []
        for position, cosine in list(zip(positions, cosines))[:top]:
            sid = int(vote.sample_ids[position])
            case = cases.get(str(sid), {})
            label = int(vote.labels[position])
            found.append({"sample_id": sid, "case": case.get("case_id", ""), "class": case.get("label", str(label)), "pseudo_label": bool(case.get("pseudo_label", False)),
                          "cosine": round(cosine, 4)})  # fmt: skip
        rows.append(found)
    return rows


def explain_batch(network, batch, probs, similar, classes, out: Path, loader: "StudyLoader", data_root: str | None) -> None:
    """Evidence PNGs for one predicted batch."""
    layers = network.memory_layers()
    attention = layers[-1].evidence.get("cls_attention") if layers else None
    for i, (study, image) in enumerate(batch):
        cases = similar[i] if similar else []
        case_images = []
        for case in cases[:4]:
            try:
                case_images.append(loader.load(Study(case["case"], os.path.join(data_root, case["case"]))) if data_root and case["case"] else None)
            except Exception:
                case_images.append(None)
        grid = attention_grid(attention[i], loader.size) if attention is not None else None
        title = f"{study.key}: {classes[int(probs[i].argmax())]} ({float(probs[i].max()):.2f})"
        render_evidence(out / "explain" / f"{safe_name(study.key)}.png", image, grid, title, cases, case_images)


def _read_done(jsonl: Path) -> list[dict]:
    """Rows already written; a trailing half line from an interrupted run is dropped."""
    if not jsonl.exists():
        return []
    rows = []
    for line in jsonl.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def _distributed() -> tuple[int, int]:
    """(rank, world size); under ``torchrun`` a gloo process group is started if none is."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _append_jsonl(path: Path, rows: list[dict]) -> None:
    """Append whole lines and make them durable: a kill loses at most the line being written."""
    with open(path, "a") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
        fh.flush()
        os.fsync(fh.fileno())


def run_prediction(
    inputs: list[str],
    model_path: str,
    output_dir: str,
    card_path: str | None = None,
    resume: bool = False,
    slice_policy: str = "middle",
    window: tuple | None = None,
    batch_size: int = 32,
    top_cases: int = 5,
    explain: bool = False,
    data_root: str | None = None,
    workers: int = 0,
    case_vote: str | None = None,
    dihedral: bool = False,
    memory_mode: str = "prototypes",
) -> dict:
    """Predict every study under ``inputs``; see the module docstring for the outputs. With
    ``explain``, also ``explain/<input>.png`` per input and ``index.html``; recalled training cases are
    drawn when ``data_root`` (where the training images are) is given.

    With ``dihedral`` the class probabilities are the mean over each image's 8 flips and right-angle turns
    (:mod:`medmem.engine.dihedral`; 8 forward passes, 2D square models only; rows say ``"views": 8``). The evidence
    (memory reliance, familiarity, similar cases, attention) stays that of the image itself, and a case vote compares
    the image itself with its cases, fused at the weight validation chose for the single-view softmax.

    With ``memory_mode`` ``off`` the probabilities come from the same weights with every memorising layer run as plain
    self-attention (what the summarise step scores as ``validation_memory_off`` and names when it validates best; rows say
    ``"memory_mode": "off"``). The evidence then comes from a separate pass that reads the prototypes: similar cases,
    familiarity and the attention map are what that pass recalls and attends to for the image, not what the prediction
    used, and ``memory_reliance`` is empty. A case vote was weighed against the network as it reads its memory, so it is refused with ``off``.

    Under ``torchrun`` each process takes every N-th input and appends to its own part files
    (``predictions.part<rank>.jsonl``, ``errors.part<rank>.jsonl``); rank 0 merges them into one set of
    outputs at the end. A run that was killed keeps its part files, and ``resume`` picks them up.
    """
    if memory_mode not in DEPLOYABLE_MEMORY_MODES:
        raise ValueError(f"memory_mode must be one of {DEPLOYABLE_MEMORY_MODES} (model.pt holds prototypes, not the full memory), got {memory_mode!r}")
    if memory_mode == "off" and case_vote:
        raise ValueError(f"{case_vote}: the case vote's weight was chosen on validation against the network reading its memory; "
                         "it is not validated for memory mode off (predict without --case-vote, or with the prototypes)")  # fmt: skip
    rank, world = _distributed()
    network, card = load_deployable(model_path, card_path)
    cfg, classes = card["network"], card["class_names"]
    vote, vote_cases = load_case_vote_file(case_vote) if case_vote else (None, {})
    if vote is not None and (vote.in_channels != cfg["in_channels"] or vote.num_classes != len(classes)):
        raise ValueError(
            f"{case_vote}: this case vote was fitted for {vote.in_channels}-channel images and {vote.num_classes} classes, "
            f"the model takes {cfg['in_channels']} channels and {len(classes)} classes"
        )
    if vote is not None and getattr(vote, "img_size", cfg["img_size"]) != list(cfg["img_size"]):  # a trunk vote is sized
        raise ValueError(f"{case_vote}: this case vote's trunk takes {vote.img_size} images, the model {cfg['img_size']}")
    if dihedral:
        check_dihedral_model(cfg, card, model_path)
    loader = StudyLoader(cfg["img_size"], cfg["in_channels"], cfg["spatial_dims"], slice_policy, window)
    for layer in network.memory_layers():
        layer.record_evidence = True
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    jsonl, errors_csv = out / "predictions.jsonl", out / "errors.csv"
    if rank == 0 and not resume:
        for stale in [jsonl, errors_csv, *out.glob("predictions.part*.jsonl"), *out.glob("errors.part*.jsonl")]:
            stale.unlink(missing_ok=True)
    _barrier(world)
    done_rows = _read_done(jsonl) + [r for part in sorted(out.glob("predictions.part*.jsonl")) for r in _read_done(part)]
    done_errors = [{"input": e[0], "reason": e[1]} for e in (list(csv.reader(open(errors_csv)))[1:] if errors_csv.exists() else [])]
    done_errors += [e for part in sorted(out.glob("errors.part*.jsonl")) for e in _read_done(part)]
    done = {r["input"] for r in done_rows} | {e["input"] for e in done_errors}
    views = 8 if dihedral else 1
    if any(r.get("views", 1) != views for r in done_rows):  # one table, one way of scoring
        raise ValueError(f"{out}: the predictions there were made {'without' if dihedral else 'with'} --dihedral; resume them the same way, or use a new output folder")
    other_modes = {r.get("memory_mode", "prototypes") for r in done_rows} - {memory_mode}  # rows before --memory-mode: prototypes
    if other_modes:
        raise ValueError(f"{out}: the predictions there were made with memory mode {other_modes.pop()}; resume them the same way, or use a new output folder")
    studies, discovery_errors = discover_studies(inputs)
    my_part, my_errors = out / f"predictions.part{rank}.jsonl", out / f"errors.part{rank}.jsonl"
    if rank == 0:
        _append_jsonl(my_errors, [{"input": k, "reason": r} for k, r in discovery_errors if k not in done])
    todo = [s for s in studies if s.key not in done][rank::world]
    from tqdm import tqdm

    batch: list[tuple[Study, torch.Tensor]] = []

    def flush() -> None:
        if not batch:
            return
        images = torch.stack([t for _, t in batch])
        with torch.no_grad():  # the evidence is read from the last forward pass: the image itself in either case
            if memory_mode == "off":
                network(images)  # the prototypes' recall of the image itself, kept as evidence; its output is not used
                reliance, similar, familiarity = _evidence_rows(network, card, top_cases)
                reliance = []  # the prediction below reads no memory
                deployed = network.config["memory_mode"]
                network.set_memory_mode("off")  # a plain layer keeps the evidence the pass above recorded
                try:
                    probs = dihedral_probabilities(network, images) if dihedral else network(images).softmax(-1)
                finally:
                    network.set_memory_mode(deployed)
            else:
                probs = dihedral_probabilities(network, images) if dihedral else network(images).softmax(-1)
                reliance, similar, familiarity = _evidence_rows(network, card, top_cases)
        voted_cases: list[list[dict]] = []
        if vote is not None:
            found = vote.nearest(images)
            voted_cases = voted_case_rows(vote, vote_cases, *found, top_cases)
            probs = vote.fuse_found(probs, *found)
        threshold = card.get("ood_threshold")
        rows = []
        for i, (study, _) in enumerate(batch):
            p = probs[i]
            rows.append(
                {
                    "input": study.key,
                    "series_uid": study.series_uid,
                    "predicted": classes[int(p.argmax())],
                    "probabilities": {c: round(float(v), 6) for c, v in zip(classes, p)},
                    "views": views,
                    "memory_mode": memory_mode,
                    "memory_reliance": round(reliance[i], 4) if reliance else None,
                    "familiarity": round(familiarity[i], 4) if familiarity else None,
                    "out_of_distribution": bool(familiarity[i] < threshold) if familiarity and threshold is not None else None,
                    "similar_cases": similar[i] if similar else [],
                    **{key: voted_cases[i] if voted_cases and key == vote.evidence_key else [] for key in CASE_EVIDENCE_KEYS},
                }
            )
        _append_jsonl(my_part, rows)
        if explain:
            explain_batch(network, batch, probs, similar, classes, out, loader, data_root)
        batch.clear()

    decoded = torch.utils.data.DataLoader(StudyDataset(todo, loader), batch_size=None, num_workers=workers, collate_fn=lambda x: x)
    for index, image, error in tqdm(decoded, total=len(todo), desc=f"predict (rank {rank})" if world > 1 else "predict", disable=not os.isatty(2)):
        if error:
            _append_jsonl(my_errors, [{"input": todo[index].key, "reason": error}])
        else:
            batch.append((todo[index], image))
        if len(batch) == batch_size:
            flush()
    flush()
    _barrier(world)
    result = merge_outputs(out, classes, explain) if rank == 0 else {}
    _barrier(world)
    return result


def merge_outputs(out: Path, classes: list[str], explain: bool) -> dict:
    """Fold the part files into ``predictions.jsonl``/``.csv`` and ``errors.csv`` (atomically)."""
    jsonl, errors_csv = out / "predictions.jsonl", out / "errors.csv"
    pred_parts, error_parts = sorted(out.glob("predictions.part*.jsonl")), sorted(out.glob("errors.part*.jsonl"))
    rows = {r["input"]: r for path in [jsonl, *pred_parts] for r in _read_done(path)}
    errors = {e[0]: e[1] for e in (list(csv.reader(open(errors_csv)))[1:] if errors_csv.exists() else [])}
    errors.update({e["input"]: e["reason"] for path in error_parts for e in _read_done(path)})
    ordered = [rows[k] for k in sorted(rows)]
    with atomic_path(jsonl) as tmp:
        Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in ordered))
    header = ["input", "series_uid", "predicted"] + [f"prob_{c}" for c in classes] + ["views", "memory_mode", "memory_reliance", "familiarity", "out_of_distribution", "similar_cases", *CASE_EVIDENCE_KEYS]
    table = []
    for r in ordered:
        cases = ["; ".join(case_cell(c) for c in r.get(key, [])) for key in ("similar_cases", *CASE_EVIDENCE_KEYS)]
        views = r.get("views", 1)  # rows from before --dihedral existed (a resumed run) were single-view
        mode = r.get("memory_mode", "prototypes")  # rows from before --memory-mode existed read the prototypes
        table.append([r["input"], r["series_uid"], r["predicted"]] + [r["probabilities"][c] for c in classes] + [views, mode, r["memory_reliance"], r["familiarity"], r["out_of_distribution"], *cases])
    write_text_atomic(csv_text(header, table), out / "predictions.csv")
    write_text_atomic(csv_text(["input", "reason"], sorted(errors.items())), errors_csv)
    for part in pred_parts + error_parts:
        part.unlink()
    if explain:
        print(f"evidence report: {write_index(out, ordered, classes)}")
    print(f"{len(rows)} prediction(s), {len(errors)} error(s) -> {out / 'predictions.csv'}, {errors_csv}")
    return {"predicted": len(rows), "errors": len(errors)}
