"""Active learning from the memory: propose the unlabelled image the memory knows least, or the one the
model is least sure of."""

from __future__ import annotations

import logging
import math

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from lib.memory_model import MemoryModel

logger = logging.getLogger(__name__)


class MemoryStrategy(Strategy):
    """``least_familiar``: lowest similarity of the class token to its nearest memory entry (unlike
    anything labelled so far); ``most_uncertain``: highest entropy of the predicted probabilities.
    Scores are cached per image until the memory changes."""

    def __init__(self, model: MemoryModel, score: str = "least_familiar") -> None:
        if score not in ("least_familiar", "most_uncertain"):
            raise ValueError(f"unknown strategy score {score!r}")
        super().__init__(f"medmem: propose the {score.replace('_', ' ')} unlabelled image")
        self.model, self.score = model, score
        self._cache: dict[tuple[str, int], float] = {}

    def _score(self, image_id: str, path: str) -> float:
        key = (image_id, self.model.version)
        if key not in self._cache:
            result = self.model.predict(path, top_cases=0)
            if self.score == "least_familiar":
                self._cache[key] = -result["familiarity"]
            else:
                self._cache[key] = -sum(p * math.log(max(p, 1e-12)) for p in result["probabilities"])
        return self._cache[key]

    def __call__(self, request, datastore: Datastore):
        candidates = datastore.get_unlabeled_images()
        if not candidates:
            return None
        scored = []
        for image_id in candidates:
            try:
                scored.append((self._score(image_id, datastore.get_image_uri(image_id)), image_id))
            except Exception as exc:  # an unreadable image is skipped, not fatal to the loop
                logger.warning("strategy: cannot score %s: %s", image_id, exc)
        if not scored:
            return None
        score, image_id = max(scored)
        return {"id": image_id, "score": score, "strategy": self.score}
