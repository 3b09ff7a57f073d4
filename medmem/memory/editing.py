"""Edit a trained model's memory at the site: add labelled cases, correct a label, forget a case.

A *model directory* (the bundle's ``models/``) holds:

- ``model_full.pt``: the network with its full memory (the source of truth for edits);
- ``model.pt`` + ``model.json``: the deployable prototype checkpoint and its model card;
- ``memory_cases.json``: which case each memory row holds (``sample_id -> case id, class, source``);
- ``memory_audit.jsonl``: append-only log of every edit (who, when, what; case ids only as hashes);
- optionally ``case_vote.pt``: the pixel-space case vote (bundle ``case_vote.json``), edited with the memory, so a
  forgotten case is gone from it too and an added one votes.

No gradient step is taken: ``add`` runs the images through the network and writes their keys/values
(ATMA rule) with their labels; ``relabel`` changes the stored label; ``forget`` removes the rows. After
each edit the prototypes of the deployable checkpoint are refreshed from the edited full memory, so a
forgotten case cannot survive in them.
"""

from __future__ import annotations

import copy
import functools
import getpass
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F

from medmem.atomic import torch_save_atomic, write_json_atomic
from medmem.memory.prototypes import drop_full_memory, kmeans_prototypes, label_value_offsets, set_prototype_labels, top_members

REFRESH_METHODS = ("kmeans", "assign")


class MemoryEditError(ValueError):
    """An edit that cannot be done (unknown case, unknown class, no memory), with the reason."""


def case_hash(case_id: str) -> str:
    """What the audit log keeps of a case id: enough to verify a given id, nothing to read it back."""
    return hashlib.sha256(case_id.encode()).hexdigest()[:16]


class ModelDirectory:
    """Load, edit and save the memory of one model directory (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, user: str | None = None) -> None:
        from medmem.networks import MemoryViT

        self.path = Path(path)
        self.full_path, self.deploy_path = self.path / "model_full.pt", self.path / "model.pt"
        self.card_path, self.cases_path = self.path / "model.json", self.path / "memory_cases.json"
        self.audit_path = self.path / "memory_audit.jsonl"
        for needed in (self.full_path, self.card_path):
            if not needed.exists():
                raise FileNotFoundError(f"{needed}: not found (a model directory needs the full-memory checkpoint and the model card; run the bundle's summarize step)")
        self.card = json.loads(self.card_path.read_text())
        self.class_names: list[str] = list(self.card["class_names"])
        self.network = MemoryViT(**{**self.card["network"], "memory_mode": "full"})
        self.network.load_state_dict(torch.load(self.full_path, map_location="cpu", weights_only=True))
        self.network.eval()
        if not self.network.memory_layers():
            raise MemoryEditError(f"{self.full_path}: this network has no memorising layer")
        self.cases: dict[str, dict] = json.loads(self.cases_path.read_text())["cases"] if self.cases_path.exists() else {}
        for sid, label in zip(self.memory.row_ids[: self.memory.num_written].tolist(), self.memory.row_labels[: self.memory.num_written].tolist()):
            self.cases.setdefault(str(sid), {"case_id": f"sample-{sid}", "label": self._name(label), "source": "training"})
        self.user = user or os.environ.get("MEDMEM_USER") or getpass.getuser()
        self.case_vote_path = self.path / "case_vote.pt"
        self.case_vote, self.case_vote_cases = None, {}
        if self.case_vote_path.exists():
            from medmem.engine.case_vote import load_case_vote_file

            self.case_vote, self.case_vote_cases = load_case_vote_file(str(self.case_vote_path))

    def _case_vote_follows(self) -> None:
        """Refuse an edit the case vote could not follow (its cases unnamed): a forgotten case would stay in it."""
        if self.case_vote is not None and bool((self.case_vote.sample_ids < 0).any()):
            raise MemoryEditError(
                f"{self.case_vote_path}: its cases carry no sample ids (fitted before bundle 0.6.0), so an edit could not reach "
                "them; refit it with the bundle's case_vote.json, or move it out of the model directory, before editing"
            )

    # ----------------------------------------------------------------------------------------- views
    @property
    def memory(self):
        return self.network.memory_layers()[0].memory

    @functools.cached_property
    def transforms(self):
        """The model's evaluation transforms (file path -> (C, *img_size) tensor), built once."""
        from medmem.data import eval_transforms

        cfg = self.card["network"]
        return eval_transforms(cfg["img_size"][0], cfg["in_channels"], cfg["spatial_dims"])

    @functools.cached_property
    def train_transforms(self):
        """The training transforms the card records (``augmentation``), for fine-tuning with the recipe the
        network was trained with. Cards written before bundle 0.3.1 have none: right-angle turns on, intensity
        jitter off, as fine-tuning did then."""
        from medmem.data import train_transforms

        cfg, recipe = self.card["network"], {"rotate90": True, "intensity": False, **(self.card.get("augmentation") or {})}
        return train_transforms(cfg["img_size"][0], cfg["in_channels"], cfg["spatial_dims"], **recipe)

    def _name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else "unknown"

    def checksum(self) -> str:
        """One checksum over every memorising layer's content and the case vote's, if any (changes with any edit)."""
        digest = hashlib.sha256()
        for layer in self.network.memory_layers():
            digest.update(layer.memory.checksum().encode())
        if self.case_vote is not None:  # its cases are memory too (an edit reaches both)
            for tensor in (self.case_vote.bank, self.case_vote.labels, self.case_vote.sample_ids):
                digest.update(tensor.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def listing(self) -> dict:
        """``{"per_class": {class: count}, "pseudo_labelled": count, "cases": [{sample_id, case_id, class, source, pseudo_label}],
        "checksum"}``."""
        rows = []
        for sid in self.memory.row_ids[: self.memory.num_written].tolist():
            info = self.cases.get(str(sid), {})
            rows.append({"sample_id": sid, "case_id": info.get("case_id", ""), "class": info.get("label", ""), "source": info.get("source", ""),
                         "pseudo_label": bool(info.get("pseudo_label", False))})  # fmt: skip
        per_class: dict[str, int] = {}
        for row in rows:
            per_class[row["class"]] = per_class.get(row["class"], 0) + 1
        pseudo = sum(row["pseudo_label"] for row in rows)
        return {"samples": len(rows), "per_class": per_class, "pseudo_labelled": pseudo, "cases": rows, "checksum": self.checksum()}

    def _ids_of(self, case_ids: Iterable[str]) -> dict[str, int]:
        """case id (or ``sample-<id>`` / bare sample id) -> sample id; unknown ids raise with the list."""
        by_case = {info["case_id"]: int(sid) for sid, info in self.cases.items()}
        found, missing = {}, []
        for cid in case_ids:
            if cid in by_case:
                found[cid] = by_case[cid]
            elif cid.isdigit() and int(cid) in self.memory.id_to_row:
                found[cid] = int(cid)
            else:
                missing.append(cid)
        if missing:
            raise MemoryEditError(f"not in this memory: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
        return found

    # ----------------------------------------------------------------------------------------- edits
    @torch.no_grad()
    def add(self, items: list[dict], source: str, batch_size: int = 64) -> dict:
        """Write labelled cases (``{"image": tensor (C, *spatial) ready for the network, "label": int,
        "case_id": str}``) into the memory with no gradient step. Cases already held (same case id)
        are skipped. Returns ``{"added", "skipped", "seconds"}``."""
        start = time.perf_counter()
        self._case_vote_follows()
        held = {info["case_id"] for info in self.cases.values()}
        todo = [it for it in items if it["case_id"] not in held]
        for it in todo:
            if not 0 <= int(it["label"]) < len(self.class_names):
                raise MemoryEditError(f"{it['case_id']}: label {it['label']} is not a class of this model ({len(self.class_names)} classes)")
        held_ids = [int(s) for s in self.cases] + (self.case_vote.sample_ids.tolist() if self.case_vote is not None else [])
        next_id = max(held_ids + [-1]) + 1
        before = self.checksum()
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            ids = torch.arange(next_id + i, next_id + i + len(chunk))
            x = torch.stack([torch.as_tensor(it["image"]).float() for it in chunk])
            labels = torch.tensor([int(it["label"]) for it in chunk])
            self.network.write_memory(x, ids, labels)
            if self.case_vote is not None:
                self.case_vote.add(x, labels, ids)
            for sid, it in zip(ids.tolist(), chunk):
                self.cases[str(sid)] = {"case_id": it["case_id"], "label": self._name(int(it["label"])), "source": source, "pseudo_label": bool(it.get("pseudo_label", False))}
        self._audit("add", [it["case_id"] for it in todo], before, extra={"source": source, "skipped_already_held": len(items) - len(todo)})
        return {"added": len(todo), "skipped": len(items) - len(todo), "seconds": time.perf_counter() - start}

    def relabel(self, case_ids: list[str], new_class: str) -> int:
        """Give these cases the class ``new_class`` (a class name or index). Returns cases changed."""
        label = self.class_names.index(new_class) if new_class in self.class_names else int(new_class) if new_class.isdigit() else -1
        if not 0 <= label < len(self.class_names):
            raise MemoryEditError(f"unknown class {new_class!r}; this model's classes: {', '.join(self.class_names)}")
        ids = self._ids_of(case_ids)
        self._case_vote_follows()
        before = self.checksum()
        for layer in self.network.memory_layers():
            for sid in ids.values():
                layer.memory.row_labels[layer.memory.id_to_row[sid]] = label
        if self.case_vote is not None:
            self.case_vote.relabel(list(ids.values()), label)
        for sid in ids.values():  # a person chose this class: the case is no longer pseudo-labelled
            self.cases[str(sid)].update(label=self._name(label), pseudo_label=False)
        self._audit("relabel", list(ids), before, extra={"new_class": self._name(label)})
        return len(ids)

    def forget(self, case_ids: list[str]) -> int:
        """Remove these cases from every memorising layer and from the case table. Returns cases removed."""
        ids = self._ids_of(case_ids)
        self._case_vote_follows()
        before = self.checksum()
        for layer in self.network.memory_layers():
            layer.memory.remove(list(ids.values()))
        if self.case_vote is not None:
            self.case_vote.remove(list(ids.values()))
        for sid in ids.values():
            self.cases.pop(str(sid), None)
        self._audit("forget", list(ids), before)
        return len(ids)

    @torch.no_grad()
    def tune_vote_weight(self, items: list[dict], batch_size: int = 256) -> dict:
        """Re-choose the memory vote's weight w on labelled held-out cases (``{"image": tensor ready for
        the network, "label": int}``), e.g. after ``add`` wrote many cases. Returns ``{"weight",
        "previous", "cases", "scores": {w: {"acc", "nll"}}}``; ``save`` then writes the new w."""
        from medmem.memory.vote import VOTE_WEIGHT_GRID, choose_vote_weight, head_and_vote

        if not items:
            raise MemoryEditError("no labelled cases to choose the vote weight on")
        x = torch.stack([torch.as_tensor(it["image"]).float() for it in items])
        head, vote = head_and_vote(self.network, x, batch_size)
        grid = VOTE_WEIGHT_GRID
        if self.network.config.get("combiner") == "vote":
            # that combiner reads the memory only through the vote: w = 0 would leave an inert memory and a
            # model card the network refuses to rebuild from
            grid = tuple(w for w in grid if w > 0)
        weight, scores = choose_vote_weight(head, vote, torch.tensor([int(it["label"]) for it in items]), grid)
        previous = self.network.memory_vote
        before = self.checksum()
        self.network.set_memory_vote(weight)  # saved with the model card by save()
        self._audit("tune_vote", [], before, extra={"vote_weight": weight, "previous": previous, "held_out_cases": len(items)})
        return {"weight": weight, "previous": previous, "cases": len(items), "scores": scores}

    # ------------------------------------------------------------------------------------ prototypes
    @torch.no_grad()
    def refresh_prototypes(self, method: str = "kmeans", seed: int = 0) -> None:
        """Recompute the deployable prototypes from the (edited) full memory.

        ``kmeans``: re-cluster (as the summarise step's initialisation; learned refinements are lost);
        ``assign``: keep the prototype keys, re-assign every entry to its nearest prototype and take the
        mean value per prototype (fast; keys do not move, so new kinds of cases get no prototype of their own).
        """
        for layer in self.network.memory_layers():
            refresh_layer_prototypes(layer, method, seed)

    def save(self, refresh: str = "kmeans") -> None:
        """Write the full checkpoint, the deployable checkpoint (refreshed prototypes, no full memory),
        the case table, the case vote (if any) and the model card, each atomically."""
        from medmem.engine.summarize import write_model_card

        self.refresh_prototypes(refresh)
        torch_save_atomic(self.network.state_dict(), self.full_path)
        self.network.clear_transient()  # the last forward's tensors (and any autograd graph) are not state
        deployable = copy.deepcopy(self.network)
        drop_full_memory(deployable)
        deployable.set_memory_mode("prototypes")
        torch_save_atomic(deployable.state_dict(), self.deploy_path)
        write_json_atomic({"cases": self.cases}, self.cases_path)
        if self.case_vote is not None:
            from medmem.engine.case_vote import save_case_vote

            named = {**self.case_vote_cases, **self.cases}
            self.case_vote_cases = {str(s): named[str(s)] for s in self.case_vote.sample_ids.tolist() if str(s) in named}
            save_case_vote(self.case_vote, self.case_vote_cases, self.case_vote_path)
        members = {int(i) for layer in self.network.memory_layers() for i in layer.proto_members.flatten().tolist() if i >= 0}
        training_cases = {str(s): [self.cases[str(s)]["case_id"], self.cases[str(s)]["label"], bool(self.cases[str(s)].get("pseudo_label", False))]
                          for s in sorted(members) if str(s) in self.cases}  # fmt: skip
        # the card's validation scores (per memory mode) described the memory before this edit: not carried over
        write_model_card(deployable, str(self.card_path), self.class_names, training_cases, self.card.get("ood_threshold"), self.card.get("augmentation"))

    def _audit(self, action: str, case_ids: list[str], checksum_before: str, extra: dict | None = None) -> None:
        """Append one line (flushed and synced) to the audit log; case ids only as hashes."""
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "user": self.user, "action": action, "cases": len(case_ids),
            "case_hashes": [case_hash(c) for c in case_ids], "checksum_before": checksum_before, "checksum_after": self.checksum(),
            "memory_samples": self.memory.num_written, **(extra or {}),
        }  # fmt: skip
        with open(self.audit_path, "a") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


@torch.no_grad()
def refresh_layer_prototypes(layer, method: str = "kmeans", seed: int = 0) -> None:
    """Recompute one memorising layer's prototypes from its full memory (see ``refresh_prototypes``)."""
    if method not in REFRESH_METHODS:
        raise ValueError(f"refresh method must be one of {REFRESH_METHODS}, got {method!r}")
    offsets = label_value_offsets(layer)
    token = 0 if layer.same_token else None
    if method == "kmeans":
        layer.proto_keys, layer.proto_values, layer.proto_members = kmeans_prototypes(layer.memory, layer.proto_keys.shape[1], seed, value_offsets=offsets, token=token)
    else:
        layer.proto_keys, layer.proto_values, layer.proto_members = _assign_prototypes(layer, offsets, token)
    set_prototype_labels(layer)


def _assign_prototypes(layer, offsets: torch.Tensor | None, token: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keys, values and members of the prototypes after re-assigning every entry to its nearest fixed
    prototype key: value = mean (label-aware) value of its entries; a prototype left without entries is
    emptied (zero key: never read), so nothing of a forgotten case survives in it."""
    memory = layer.memory
    entries = torch.arange(memory.num_entries)
    if token is not None:
        entries = entries[token :: memory.tokens]
    keys, values = layer.proto_keys.clone(), layer.proto_values.clone()
    member_ids = torch.full_like(layer.proto_members, -1)
    num_prototypes, members = layer.proto_members.shape[1:]
    owners = memory.row_ids[entries // memory.tokens]
    for head in range(memory.num_heads):
        assign = (memory.keys[head, entries].float() @ F.normalize(layer.proto_keys[head], dim=-1).T).argmax(dim=1)
        v = memory.values[head, entries].float() + (offsets[head, entries] if offsets is not None else 0.0)
        counts = torch.bincount(assign, minlength=values.shape[1])
        sums = torch.zeros_like(values[head]).index_add_(0, assign, v)
        filled = counts > 0
        values[head, filled] = sums[filled] / counts[filled, None]
        keys[head, ~filled], values[head, ~filled] = 0.0, 0.0
        member_ids[head] = top_members(owners, assign, num_prototypes, members)
    return keys, values, member_ids


def load_cases(directory: ModelDirectory, items: list[dict]) -> tuple[list[dict], list[tuple[str, str]]]:
    """Each item's image (path or npz reference) through the model's evaluation transforms. A file that
    cannot be read is reported as ``(case_id, reason)``, the rest are returned ready for the network."""
    ready, failed = [], []
    for item in items:
        try:
            ready.append({**item, "image": directory.transforms({"image": item["image"]})["image"]})
        except Exception as exc:  # a bad file is reported, the rest are used
            failed.append((item.get("case_id", str(item["image"])), f"{type(exc).__name__}: {exc}".splitlines()[0]))
    return ready, failed


def add_from_datalist(directory: ModelDirectory, items: list[dict], source: str, refresh: str = "kmeans") -> dict:
    """Load and write ``items`` (``{"image": path or npz ref, "label", "case_id"}``) with the model's
    evaluation transforms, then save. A file that cannot be read is reported, the rest are written.

    Returns ``{"added", "skipped", "seconds", "failed": [(case_id, reason)]}``.
    """
    ready, failed = load_cases(directory, items)
    report = directory.add(ready, source=source)
    directory.save(refresh=refresh)
    return {**report, "failed": failed}


def add_manifest_split(
    model_dir: str, manifest: str, split: str = "training", regime: int | None = None, exclude_regime: int | None = None,
    data_root: str | None = None, refresh: str = "kmeans", user: str | None = None,
) -> dict:  # fmt: skip
    """``medmem memory add --manifest`` and the bundle's ``memory_add`` config: write a manifest split
    (optionally one regime's subset, optionally without another regime's cases) into a model directory."""
    from medmem.data import load_datalist, load_manifest

    directory = ModelDirectory(model_dir, user=user)
    m = load_manifest(manifest)
    if list(m["classes"]) != directory.class_names:
        raise MemoryEditError(f"{manifest}: classes {m['classes']} differ from the model's {directory.class_names}")
    items = load_datalist(m, split, data_root, regime)
    if exclude_regime is not None:
        held = {d["sample_id"] for d in load_datalist(m, split, data_root, exclude_regime)}
        items = [d for d in items if d["sample_id"] not in held]
    source = f"{Path(manifest).name}:{split}" + (f":{regime}%" if regime else "")
    report = add_from_datalist(directory, items, source, refresh)
    return {**report, "memory_samples": directory.memory.num_written}
