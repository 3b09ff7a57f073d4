"""Near-duplicate grouping on real brain MRI slices: re-saved copies and adjacent slices share a group."""

from __future__ import annotations

import torch

from medmem.data.manifest import SPLITS, Candidate, build_manifest, hash_candidates
from medmem.data.near_duplicates import group_near_duplicates, linked_components

TRAINING = "brain_tumor_mri/Training"
# found by the grouping on the full folder, checked by eye: the same slice saved twice, and two
# consecutive slices of one scan; the last two are unrelated slices of the same classes
RESAVED = ["meningioma_tumor/m1(114).jpg", "meningioma_tumor/m3 (145).jpg"]
ADJACENT = ["glioma_tumor/gg (570).jpg", "glioma_tumor/gg (571).jpg"]
UNRELATED = ["glioma_tumor/gg (10).jpg", "meningioma_tumor/m (2).jpg"]


def candidates(data_root, names):
    cands = [Candidate(f"{TRAINING}/{n}", n.split("/")[0]) for n in names]
    cands, errors = hash_candidates(data_root, cands)
    assert not errors
    return cands


def test_resaved_copies_and_adjacent_slices_are_grouped_apart_from_others(data_root):
    cands = candidates(data_root, RESAVED + ADJACENT + UNRELATED)
    assert len({c.sha256 for c in cands}) == 6  # no byte-identical pair: a content hash alone sees six images
    assert group_near_duplicates(data_root, cands) == 4
    group = {c.image.removeprefix(f"{TRAINING}/"): c.group for c in cands}
    assert group[RESAVED[0]] == group[RESAVED[1]] is not None
    assert group[ADJACENT[0]] == group[ADJACENT[1]] is not None
    assert group[RESAVED[0]] != group[ADJACENT[0]]
    assert group[UNRELATED[0]] is None and group[UNRELATED[1]] is None


def test_group_ids_do_not_depend_on_file_order(data_root):
    forward = candidates(data_root, RESAVED + ADJACENT)
    backward = candidates(data_root, list(reversed(RESAVED + ADJACENT)))
    group_near_duplicates(data_root, forward)
    group_near_duplicates(data_root, backward)
    assert {c.image: c.group for c in forward} == {c.image: c.group for c in backward}


def test_a_group_lands_in_one_split(data_root):
    names = RESAVED + ADJACENT + UNRELATED
    cands = candidates(data_root, names)
    group_near_duplicates(data_root, cands)
    m = build_manifest("x", cands, fractions={"training": 0.5, "validation": 0.25, "test": 0.25}, seed=0)
    home = {}
    for split in SPLITS:
        for entry in m[split]:
            if "group" in entry:
                assert home.setdefault(entry["group"], split) == split
    assert len(home) == 2 and sum(len(m[s]) for s in SPLITS) == 6


def test_links_chain_into_one_component():
    thumbs = torch.tensor([[0.0], [0.015], [0.03], [0.5]])  # 0-1 and 1-2 are close, 0-2 is not
    ids = linked_components(thumbs, threshold=0.02)
    assert ids[0] == ids[1] == ids[2] != ids[3]
