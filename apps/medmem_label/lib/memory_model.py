"""The one memory model the app serves: shared by the infer task, the label callback and the strategies.

It holds the model directory's full-memory network (so a newly labelled image is read by the very next
inference) behind a lock (MONAI Label runs inferences in a thread pool), and reloads it when another
process (a training run) has written the model directory since.
"""

from __future__ import annotations

import json
import logging
import os
import threading

import torch

from medmem.engine.batch_predict import check_dihedral_model, voted_case_rows
from medmem.engine.case_vote import CASE_EVIDENCE_KEYS
from medmem.engine.dihedral import dihedral_probabilities
from medmem.memory.editing import ModelDirectory

logger = logging.getLogger(__name__)

# Classification labels in the datastore: a JSON label file per image, {"class": "<class name>"}
LABEL_KEY = "class"


class MemoryModel:
    def __init__(self, model_dir: str, refresh: str = "kmeans", dihedral: bool = False) -> None:
        """``dihedral``: by default, average the class probabilities over each image's 8 flips and right-angle turns
        (as ``medmem predict --dihedral``); a request can say otherwise. A model whose input a turn would not fit (3D, not
        square) is refused here, naming its file, rather than at the first request."""
        self.model_dir, self.refresh, self.dihedral = model_dir, refresh, dihedral
        self.lock = threading.RLock()
        self._load()
        if dihedral:
            self.check_dihedral(self.directory)

    def _load(self) -> None:
        self.directory = ModelDirectory(self.model_dir, user="monailabel")
        self._stamp = os.stat(self.directory.full_path).st_mtime_ns
        self.version = 0  # bumped on every memory change (strategies cache by it)
        self._dihedral_checked = False

    def check_dihedral(self, md: ModelDirectory) -> None:
        """As ``medmem predict --dihedral``: refuse a 3D or non-square model by its file, warn (once per loaded model) when
        its card says it was trained without right-angle turns."""
        if not self._dihedral_checked:
            check_dihedral_model(md.card["network"], md.card, str(md.full_path))
            self._dihedral_checked = True

    @property
    def class_names(self) -> list[str]:
        return self.directory.class_names

    @property
    def transforms(self):
        """The model's evaluation chain (one, cached on the model directory)."""
        return self.current().transforms

    def current(self) -> ModelDirectory:
        """The model directory, reloaded first if its checkpoint changed on disk (e.g. after training)."""
        with self.lock:
            if os.stat(self.directory.full_path).st_mtime_ns != self._stamp:
                logger.info("model directory changed on disk: reloading %s", self.model_dir)
                self._load()
            return self.directory

    @torch.no_grad()
    def predict(self, image_path: str, top_cases: int = 5, dihedral: bool | None = None) -> dict:
        """Probabilities, evidence (similar memory cases with classes, familiarity, reliance) for one image. With a case
        vote in the model directory (``case_vote.pt``) the probabilities are fused with it at its validated weight and
        ``pixel_similar_cases`` (or ``trunk_similar_cases``, for a vote in the pre-trained trunk's features) lists the
        cases nearest in its space that voted (labels saved here included). ``dihedral`` (default: the app's setting)
        averages the network's probabilities over the image's 8 flips and turns; the evidence stays the image's own."""
        averaged = self.dihedral if dihedral is None else dihedral
        with self.lock:
            md = self.current()
            if averaged:
                self.check_dihedral(md)
            x = md.transforms({"image": image_path})["image"].float()[None]
            layer = md.network.memory_layers()[-1]
            layer.record_evidence = True
            try:  # the image itself is the last forward pass either way, so the evidence is its own
                probs = (dihedral_probabilities(md.network, x) if averaged else md.network(x).softmax(-1))[0]
                ev = layer.evidence
            finally:
                layer.record_evidence = False
            voted = {key: [] for key in CASE_EVIDENCE_KEYS}
            if md.case_vote is not None:
                found = md.case_vote.nearest(x)
                probs = md.case_vote.fuse_found(probs[None], *found)[0]
                cases = voted_case_rows(md.case_vote, md.case_vote_cases, *found, top_cases)[0]
                voted[md.case_vote.evidence_key] = [{"case_id": c["case"], "class": c["class"], "pseudo_label": c["pseudo_label"], "cosine": c["cosine"]} for c in cases]
            weights = ev["weights"][0].mean(0)  # (k,) averaged over heads
            owners = ev["sample_ids"][0, 0, :, 0]  # (k,) first head's neighbours
            similar = []
            for w, sid in sorted(zip(weights.tolist(), owners.tolist()), reverse=True):
                info = md.cases.get(str(int(sid)))
                if sid >= 0 and info and len(similar) < top_cases:
                    similar.append({"case_id": info["case_id"], "class": info["label"], "pseudo_label": bool(info.get("pseudo_label", False)), "weight": round(w, 4)})
            return {
                "probabilities": probs.tolist(),
                "views": 8 if averaged else 1,
                "familiarity": float(ev["familiarity"][0]),
                "memory_reliance": float(ev["reliance"][0]),
                "similar_cases": similar,
                **voted,
                "memory_samples": md.memory.num_written,
            }

    def write_label(self, image_id: str, image_path: str, label_file: str) -> dict:
        """Write a newly labelled image into the memory (or correct its class if already held)."""
        try:
            name = json.loads(open(label_file).read())[LABEL_KEY]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{label_file}: a classification label must be JSON {{\"{LABEL_KEY}\": \"<class>\"}} ({exc})") from exc
        with self.lock:
            md = self.current()
            if name not in md.class_names:
                raise ValueError(f"{label_file}: class {name!r} is not one of {md.class_names}")
            case_id = f"monailabel:{image_id}"
            held = {info["case_id"] for info in md.cases.values()}
            if case_id in held:
                md.relabel([case_id], name)
                action = "relabel"
            else:
                x = md.transforms({"image": image_path})["image"].float()
                md.add([{"image": x, "label": md.class_names.index(name), "case_id": case_id}], source="monailabel")
                action = "add"
            md.save(refresh=self.refresh)
            self._stamp = os.stat(md.full_path).st_mtime_ns
            self.version += 1
            return {"memory": action, "class": name, "memory_samples": md.memory.num_written}
