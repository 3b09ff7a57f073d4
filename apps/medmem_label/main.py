"""MONAI Label app serving a medmem memory model for classification annotation loops.

    monailabel start_server --app apps/medmem_label --studies <images folder> \
        --conf model_dir <bundle run>/models --host 127.0.0.1 --port 8000

(``make label-server MODEL_DIR=... STUDIES=...`` does this in the app's own environment.)

- infer ``medmem``: class probabilities plus the most similar memory cases, familiarity and reliance
  (``--conf dihedral true``, or ``{"dihedral": true}`` in a request's params: probabilities averaged over 8 flips and turns);
- saving a label (a JSON file ``{"class": "<name>"}``, tag ``final``) writes the image into the memory
  at once: the next inference already reads it (the edit is in the model directory's audit log);
- train ``medmem_finetune``: fine-tunes the layers after the memory on the datastore's labelled images;
- strategies ``least_familiar`` and ``most_uncertain`` propose the next image to label.
"""

from __future__ import annotations

import logging
import os

from lib.infer import MemoryClassifier
from lib.memory_model import MemoryModel
from lib.strategy import MemoryStrategy
from lib.train import MemoryFinetune
from monailabel.interfaces.app import MONAILabelApp

from medmem.flags import as_flag

logger = logging.getLogger(__name__)


class MedMemApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        model_dir = conf.get("model_dir") or os.environ.get("MEDMEM_MODEL_DIR")
        if not model_dir:
            raise ValueError("medmem app: pass --conf model_dir <bundle run>/models (model_full.pt, model.json)")
        self.memory_model = MemoryModel(model_dir, refresh=conf.get("memory_refresh", "kmeans"), dihedral=as_flag(conf.get("dihedral", False), "dihedral"))
        self.train_dir = conf.get("train_dir") or os.path.join(model_dir, "finetune_runs")
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="medmem", description="memory ViT classification with an editable memory",
                         labels=self.memory_model.class_names)  # fmt: skip

    def init_infers(self):
        return {"medmem": MemoryClassifier(self.memory_model)}

    def init_trainers(self):
        return {"medmem_finetune": MemoryFinetune(self.memory_model, self.train_dir)}

    def init_strategies(self):
        return {name: MemoryStrategy(self.memory_model, name) for name in ("least_familiar", "most_uncertain")}

    def on_save_label(self, image_id, label_id):
        datastore = self.datastore()
        try:
            label_file = datastore.get_label_uri(label_id, "final")
            result = self.memory_model.write_label(image_id, datastore.get_image_uri(image_id), label_file)
        except (ValueError, OSError) as exc:  # the label is stored; the memory says why it did not take it
            logger.warning("label for %s not written into the memory: %s", image_id, exc)
            return {"memory": "not written", "reason": str(exc)}
        logger.info("label for %s written into the memory: %s", image_id, result)
        return result
