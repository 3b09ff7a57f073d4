"""Classification infer task: the memory ViT with its full memory, plus the evidence behind a prediction."""

from __future__ import annotations

from typing import Any, Dict, Tuple

from monai.transforms import Activationsd
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from lib.memory_model import MemoryModel
from medmem.flags import as_flag


class MemoryClassifier(BasicInferTask):
    """Runs on the app's shared :class:`MemoryModel`; MONAI Label's pre/infer/post pipeline is replaced
    by one call because the model, its transforms and its memory live in that object."""

    def __init__(self, model: MemoryModel) -> None:
        self.model = model
        super().__init__(
            path=None, network=None, type=InferType.CLASSIFICATION, labels=model.class_names, dimension=2,
            description="medmem memory ViT: class probabilities with the most similar memory cases", skip_writer=False,
        )  # fmt: skip

    def is_valid(self) -> bool:
        return True

    def pre_transforms(self, data=None):
        """medmem's evaluation chain for this model's input (what ``MemoryModel.predict`` applies)."""
        return [self.model.transforms]

    def post_transforms(self, data=None):
        return [Activationsd(keys="pred", softmax=True)]

    def __call__(self, request, callbacks=None) -> Tuple[None, Dict[str, Any]]:
        image = request.get("image")
        if not isinstance(image, str):
            raise ValueError("medmem infer: 'image' must be a datastore image id or a file path")
        dihedral = request.get("dihedral")  # a request's own choice, else the app's (--conf dihedral true)
        result = self.model.predict(image, int(request.get("top_cases", 5)), None if dihedral is None else as_flag(dihedral, "dihedral"))
        prediction = [{"idx": i, "label": name, "score": p} for i, (name, p) in enumerate(zip(self.model.class_names, result["probabilities"]))]
        best = max(prediction, key=lambda r: r["score"])
        return None, {"prediction": prediction, "label": best["label"], **{k: v for k, v in result.items() if k != "probabilities"}}
