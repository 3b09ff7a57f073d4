"""Self-training manifests: which unlabelled images join, under which label, and what is never copied."""

import numpy as np
import pytest

from medmem.data.manifest import ManifestError, check_manifest
from medmem.data.pseudo_labels import class_quota_selection, pseudo_labelled_manifest, unlabelled_indices


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


def test_a_class_quota_gives_each_class_places_in_its_labelled_share_to_its_most_confident_images():
    # 10 scored images; the labelled mix is 3/4 class 0 and 1/4 class 1, class 2 absent
    probs = np.array(
        [[0.94, 0.06, 0], [0.98, 0.02, 0], [0.95, 0.05, 0], [0.99, 0.01, 0], [0.96, 0.04, 0], [0.97, 0.03, 0],
         [0.4, 0.6, 0], [0.3, 0.7, 0], [0.45, 0.55, 0], [0.1, 0.1, 0.8]]
    )  # fmt: skip
    keep = class_quota_selection(probs, [0, 0, 0, 1], quota=0.4)
    # class 0: round(0.4 * 0.75 * 10) = 3 places for its 6 candidates, its 3 most confident (0.99, 0.98, 0.97);
    # class 1: round(0.4 * 0.25 * 10) = 1 of 3 (0.7); class 2: none
    assert keep.tolist() == [False, True, False, True, False, True, False, True, False, False]
    # a threshold still applies under the quota: class 1 has 3 places and one candidate above 0.65, image 7
    assert class_quota_selection(probs, [0] * 6 + [1] * 3 + [2], quota=1.0, threshold=0.65).tolist() == [True] * 6 + [False, True, False, True]
    with pytest.raises(ValueError, match="quota"):
        class_quota_selection(probs, [0, 1], quota=0.0)


def test_under_a_class_quota_a_less_confident_image_of_a_scarce_class_joins_where_one_threshold_would_not():
    m = _manifest()  # regime 50 labels one image of each class
    idx = unlabelled_indices(m, 50)
    probs = np.array([[0.99, 0.01, 0.0], [0.98, 0.02, 0.0], [0.97, 0.03, 0.0], [0.2, 0.6, 0.2], [0.1, 0.2, 0.7]])
    by_threshold = pseudo_labelled_manifest(m, 50, idx, probs, threshold=0.9)
    by_quota = pseudo_labelled_manifest(m, 50, idx, probs, threshold=0.0, class_quota=0.6)  # 1 place per class
    assert [e["image"] for e in by_threshold["training"] if e["pseudo_label"]] == ["t3.png", "t4.png", "t5.png"]
    assert [(e["image"], e["label"]) for e in by_quota["training"] if e["pseudo_label"]] == [("t3.png", 0), ("t6.png", 1), ("t7.png", 2)]
    assert "quota of 0.6" in by_quota["split_policy"] and "quota" not in by_threshold["split_policy"]


def test_teacher_scores_are_saved_reused_for_the_same_teacher_and_refused_for_another(tmp_path):
    import torch

    from medmem.engine.pseudo_label import teacher_scores

    torch.manual_seed(0)
    items = [{"image": torch.randn(2, 4, 4)} for _ in range(6)]
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32, 3))
    checkpoint = tmp_path / "teacher.pt"
    torch.save(net.state_dict(), checkpoint)
    scores = tmp_path / "scores.npz"
    first = teacher_scores(net, checkpoint, items, [1, 3, 4], lambda d: d, scores, dihedral=False)
    with torch.no_grad():
        by_hand = net(torch.stack([items[i]["image"] for i in (1, 3, 4)])).softmax(-1).numpy()
    np.testing.assert_allclose(first, by_hand, rtol=0, atol=1e-6)
    assert not list(tmp_path.glob(".*"))  # written under a temporary name, then renamed

    class Refuses(torch.nn.Module):  # the saved scores are read back: the network is not run again
        def forward(self, x):
            raise AssertionError("rescored")

    np.testing.assert_array_equal(teacher_scores(Refuses(), checkpoint, items, [1, 3, 4], lambda d: d, scores, dihedral=False), first)
    with pytest.raises(ValueError, match=r"scores.npz: teacher scores of another dihedral"):
        teacher_scores(Refuses(), checkpoint, items, [1, 3, 4], lambda d: d, scores, dihedral=True)
    with pytest.raises(ValueError, match="another indices"):
        teacher_scores(Refuses(), checkpoint, items, [1, 3], lambda d: d, scores, dihedral=False)
    hashed = tmp_path / "hashed.npz"
    teacher_scores(net, checkpoint, items, [1, 3, 4], lambda d: d, hashed, dihedral=False, image_hashes=["h1", "h3", "h4"])
    np.testing.assert_array_equal(teacher_scores(Refuses(), checkpoint, items, [1, 3, 4], lambda d: d, hashed, dihedral=False, image_hashes=["h1", "h3", "h4"]), first)
    with pytest.raises(ValueError, match="another images_sha256"):  # the manifest now holds other images at those indices
        teacher_scores(Refuses(), checkpoint, items, [1, 3, 4], lambda d: d, hashed, dihedral=False, image_hashes=["h1", "h3", "h9"])
    torch.nn.init.zeros_(net[1].weight)
    torch.save(net.state_dict(), checkpoint)  # the teacher was retrained: its old scores must not be used
    with pytest.raises(ValueError, match="another teacher_sha256"):
        teacher_scores(Refuses(), checkpoint, items, [1, 3, 4], lambda d: d, scores, dihedral=False)


def test_the_summary_gives_the_teachers_top_probabilities_and_a_threshold_above_label_smoothings_ceiling_warns(tmp_path):
    """A teacher trained with label smoothing e over C classes seldom passes 1 - e + e/C (session 32: PBC's never passed
    0.956, and 0.9 took a third of its unlabelled images): the summary says where its top probabilities lie."""
    import hashlib
    import json
    import warnings

    import torch

    from medmem.data.manifest import sha256_file
    from medmem.engine.pseudo_label import write_pseudo_labelled_manifest

    m = _manifest()
    (tmp_path / "source.json").write_text(json.dumps(m))
    net = torch.nn.Linear(2, 3)
    checkpoint = tmp_path / "teacher.pt"
    torch.save(net.state_dict(), checkpoint)
    idx = unlabelled_indices(m, 50)  # 3..7
    probs = np.array([[0.95, 0.03, 0.02], [0.1, 0.88, 0.02], [0.3, 0.3, 0.4], [0.05, 0.05, 0.9], [0.7, 0.2, 0.1]])
    images = hashlib.sha256("\n".join(m["training"][i]["sha256"] for i in idx).encode()).hexdigest()
    np.savez(tmp_path / "scores.npz", probabilities=probs, teacher_sha256=sha256_file(checkpoint), dihedral=True, indices=np.asarray(idx), images_sha256=images)

    def run(threshold):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            summary = write_pseudo_labelled_manifest(net, checkpoint, tmp_path / "source.json", 50, lambda d: d, tmp_path / "p.json", threshold=threshold,
                                                     data_root=tmp_path, scores=tmp_path / "scores.npz", label_smoothing=0.1)  # fmt: skip
        return summary, [str(w.message) for w in caught if "label_smoothing" in str(w.message)]

    summary, warned = run(0.95)  # above 1 - 0.1 + 0.1/3 = 0.9333
    assert summary["teacher_top_probability"] == pytest.approx({"max": 0.95, "median": 0.88})
    assert summary["pseudo_labelled"] == 1
    assert len(warned) == 1 and "pseudo_threshold 0.95 is above 0.9333" in warned[0]
    summary, warned = run(0.85)
    assert summary["pseudo_labelled"] == 3 and warned == []
