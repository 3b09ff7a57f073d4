"""Fine-tuning as a MONAI Label train task, on the labelled images of the datastore.

Only what sits *after* the memorising layer's key/value projection is trained (its output projection
and MLP, the later blocks, the final norm and head, and the memory read's gate, temperature and label
embedding). The keys and values already stored in the memory were computed by the frozen part, so
they stay valid: fine-tuning never silently invalidates the memory. The result is written into the
model directory's checkpoints (memory as it is on disk then, including labels saved meanwhile).
"""

from __future__ import annotations

import json
import logging

import torch
from ignite.engine import Events
from ignite.metrics import Accuracy
from monai.inferers import SimpleInferer
from monai.transforms import Activationsd
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.basic_train import BasicTrainTask, Context

from lib.memory_model import LABEL_KEY, MemoryModel
from medmem.engine.metrics import stack_pred_label
from medmem.memory.editing import ModelDirectory

logger = logging.getLogger(__name__)


def trainable_after_memory(network: torch.nn.Module) -> list[str]:
    """Names of the parameters downstream of the first memorising layer's ``qkv`` (see module docstring)."""
    first = min(i for i, b in enumerate(network.blocks) if b.attn in network.memory_layers())
    names = []
    for name, _ in network.named_parameters():
        parts = name.split(".")
        if parts[0] == "blocks":
            index = int(parts[1])
            if index > first or (index == first and not (parts[2] in ("norm1",) or (parts[2] == "attn" and parts[3] == "qkv"))):
                names.append(name)
        elif parts[0] in ("norm", "classification_head"):
            names.append(name)
    return names


class MemoryFinetune(BasicTrainTask):
    def __init__(self, model: MemoryModel, output_dir: str) -> None:
        self.model = model
        config = {
            "max_epochs": 5, "train_batch_size": 16, "val_batch_size": 16, "val_split": 0.2, "learning_rate": 1e-4,
            "multi_gpu": False, "dataset": "Dataset", "dataloader": "DataLoader", "tracking": "None", "device": "cpu",
        }  # fmt: skip
        super().__init__(output_dir, "medmem: fine-tune the layers after the memory on the labelled images", config=config,
                         amp=False, labels=model.class_names, tracking=None, key_metric_filename="model.pt")  # fmt: skip

    def load_path(self, output_dir, pretrained=True):
        return None  # weights come from the model directory (network()), never from an older run

    def pre_process(self, request, datastore: Datastore):
        items = []
        for entry in datastore.datalist():
            try:
                name = json.loads(open(entry["label"]).read())[LABEL_KEY]
            except (OSError, ValueError, KeyError, TypeError):
                logger.warning("skipping %s: label is not a classification label file", entry["image"])
                continue
            if name in self.model.class_names:
                items.append({"image": entry["image"], "label": self.model.class_names.index(name)})
        if not items:
            raise ValueError("no labelled images in the datastore to train on")
        return items

    def network(self, context: Context):
        md = ModelDirectory(self.model.model_dir, user="monailabel-train")
        net = md.network
        keep = set(trainable_after_memory(net))
        for name, p in net.named_parameters():
            p.requires_grad_(name in keep)
        context.request["_trainable"] = sorted(keep)
        return net

    def optimizer(self, context: Context):
        params = [p for p in context.network.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=float(context.request.get("learning_rate", 1e-4)), weight_decay=0.05)

    def loss_function(self, context: Context):
        return torch.nn.CrossEntropyLoss()

    def lr_scheduler_handler(self, context: Context):
        return None

    def train_pre_transforms(self, context: Context):
        return self.model.directory.train_transforms  # the recipe the model card records

    def val_pre_transforms(self, context: Context):
        return self.model.transforms

    def train_post_transforms(self, context: Context):
        return [Activationsd(keys="pred", softmax=True)]

    def train_key_metric(self, context: Context):
        return {self.TRAIN_METRIC_ACCURACY: Accuracy(output_transform=stack_pred_label)}

    def val_key_metric(self, context: Context):
        return {self.VAL_METRIC_ACCURACY: Accuracy(output_transform=stack_pred_label)}

    def val_inferer(self, context: Context):
        return SimpleInferer()

    def finalize(self, context: Context):
        super().finalize(context)
        context.trainer.add_event_handler(Events.COMPLETED, lambda engine: self.publish(context))

    def publish(self, context: Context) -> None:
        """Copy the trained parameters into the model directory as it is on disk now, and save it."""
        trained = {n: p.detach().cpu() for n, p in context.network.named_parameters() if p.requires_grad}
        with self.model.lock:
            md = ModelDirectory(self.model.model_dir, user="monailabel-train")
            state = md.network.state_dict()
            state.update(trained)
            md.network.load_state_dict(state)
            md.save(refresh=self.model.refresh)
        logger.info("fine-tuned %d parameter tensors written to %s", len(trained), self.model.model_dir)
