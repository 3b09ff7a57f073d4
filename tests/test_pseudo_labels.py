"""Self-training manifests: which unlabelled images join, under which label, and what is never copied."""

import numpy as np
import pytest

from medmem.data.manifest import ManifestError, check_manifest
from medmem.data.pseudo_labels import pseudo_labelled_manifest, unlabelled_indices


def _manifest() -> dict:
    training = [{"image": f"t{i}.png", "label": i % 3, "sha256": f"h{i}"} for i in range(8)]
    return {
        "name": "toy",
        "classes": ["a", "b", "c"],
        "split_policy": "stratified split by content hash",
        "training": training,
        "validation": [{"image": "v0.png", "label": 1, "sha256": "hv"}],
        "test": [{"image": "x0.png", "label": 2, "sha256": "hx"}],
        "regimes": {"50": [0, 1, 2], "100": list(range(8))},
        "removed": [],
    }


def test_unlabelled_indices_are_the_training_images_outside_the_regime():
    assert unlabelled_indices(_manifest(), 50) == [3, 4, 5, 6, 7]
    with pytest.raises(ManifestError, match="no regime 3"):
        unlabelled_indices(_manifest(), 3)


def test_only_confident_images_join_under_the_teachers_label_and_their_true_label_is_dropped():
    m = _manifest()
    idx = unlabelled_indices(m, 50)
    # the teacher: image 3 confident and right (true label 0), image 4 confident and wrong (true 1, says 2),
    # image 5 exactly at the threshold, 6 and 7 below it
    probs = np.array([[0.95, 0.03, 0.02], [0.05, 0.05, 0.90], [0.10, 0.10, 0.80], [0.5, 0.4, 0.1], [0.3, 0.3, 0.4]])
    derived = pseudo_labelled_manifest(m, 50, idx, probs, threshold=0.8)
    train = derived["training"]
    assert [e["image"] for e in train] == ["t0.png", "t1.png", "t2.png", "t3.png", "t4.png", "t5.png"]
    assert [e["label"] for e in train] == [0, 1, 2, 0, 2, 2]  # t4 keeps the teacher's (wrong) 2, not its true 1
    assert [e["pseudo_label"] for e in train] == [False] * 3 + [True] * 3
    assert [e.get("confidence") for e in train[3:]] == [0.95, 0.9, 0.8]
    assert train[4]["sha256"] == "h4"  # content hash kept, so leakage checks still see the image
    assert derived["validation"] == m["validation"] and derived["test"] == m["test"]
    assert derived["regimes"] == {} and derived["name"] == "toy_r50_pseudo"
    assert "3 of the 5 unlabelled" in derived["split_policy"] and ">= 0.8" in derived["split_policy"]
    assert m["training"][4]["label"] == 1 and "pseudo_label" not in m["training"][4]  # the source manifest is untouched
    assert check_manifest(derived, data_root=".", verify_hashes=False) == []


def test_threshold_one_keeps_only_the_labelled_images():
    m = _manifest()
    idx = unlabelled_indices(m, 50)
    derived = pseudo_labelled_manifest(m, 50, idx, np.full((5, 3), 1 / 3), threshold=1.0)
    assert len(derived["training"]) == 3


def test_refuses_teacher_labels_for_labelled_images_and_misshaped_probabilities():
    m = _manifest()
    with pytest.raises(ValueError, match="labelled images"):
        pseudo_labelled_manifest(m, 50, [2, 3], np.full((2, 3), 1 / 3), 0.9)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        pseudo_labelled_manifest(m, 50, [3, 4], np.full((2, 4), 0.25), 0.9)
    with pytest.raises(ValueError, match="threshold"):
        pseudo_labelled_manifest(m, 50, [3], np.full((1, 3), 1 / 3), 1.5)
