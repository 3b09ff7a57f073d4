"""Summarise ``benchmarks/results/regimes.csv`` into a Markdown table and one plot per dataset.

    python benchmarks/regimes/report.py

Writes ``benchmarks/results/regimes.md`` and ``benchmarks/results/regimes_<dataset>.png``
(test ACC and macro AUC against regime, mean and standard deviation over seeds). ``--csv`` names another
results file (``regimes_conv_stem.csv``: the study with the bundle's default conv stem; ``ablations.csv``).
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# order of the tables: the conv-stem study (regimes_conv_stem.csv, the bundle default), then the patch-stem one
MODELS = ["vit_cs", "movit_cs", "movit_cs_proto", "vit_cs_knn", "vit_cs_knn_vote"]
MODELS += ["vit", "movit", "movit_proto", "vit_knn", "vit_knn_vote", "resnet18", "logreg"]
# each results file's title and what a reader must know about it as a whole
HEADINGS = {
    "regimes": ("Data-regime study: results so far", "Patch stem (MONAI's linear patch projection, the bundle default before 0.2.0) "
                "for every ViT row; the study with the current default stem is [regimes_conv_stem.md](regimes_conv_stem.md)."),
    "regimes_conv_stem": ("Data-regime study with the convolutional stem (the bundle default): results so far",
                          "`vit_cs` / `movit_cs` are the plain and memory ViT with `stem: conv`; `vit_cs_knn` (`_vote`) the k-NN "
                          "references over `vit_cs`'s class-token features. The stem-independent references (pixel `logreg`, "
                          "MONAI ResNet-18) are in [regimes.md](regimes.md). `*_pix` / `*_pixp`: the trained network fused with the "
                          "pixel-space case vote (sessions 14 and 16); `*_trunkvotep_cs` (session 21): fused with the bundle's trunk-space "
                          "case vote (`case_vote.json --case_vote_space trunk`) in the frozen features of the dataset's self-supervised "
                          "trunk `cs` (every training-split image, 30 epochs, labels unread; [case_vote.md](case_vote.md)), weight and "
                          "distance power chosen on validation: no network here was fine-tuned from the trunk."),
    "ablations": ("Memory design ablations: results so far", "Each row changes one setting of the memory ViT it is named after: "
                  "`movit_*` of the patch-stem `movit` (reference rows in [regimes.md](regimes.md)), `movit_cs_*` of the "
                  "conv-stem `movit_cs` (reference rows `movit_cs` / `vit_cs` in [regimes_conv_stem.md](regimes_conv_stem.md))."),
    "case_vote": ("The pixel-space case vote on retrained geometry-only cells", "Session 14 retrained conv-stem cells whose runs "
                  "were no longer on disk, to score `*_pix` (the network's output fused with `medmem.memory.pixel_vote`, weight "
                  "chosen on validation) against references from the same runs: `vit_cs`, `movit_cs`, `vit_cs_knn` here are the "
                  "retrained runs, not the rows of [regimes_conv_stem.md](regimes_conv_stem.md) (a rerun does not reproduce a "
                  "committed row to the digit; docs/design.md \"Session 14\"). Session 15 added cells the same way, and "
                  "`movit_cs_px`: the memory ViT whose class token reads the entries of its 10 nearest training images in "
                  "pixels (`memory_retrieval pixels`), `movit_cs_px_pix` the same with the case vote; `movit_cs_px_vs` / `movit_cs_px_sep` "
                  "the same read with the vote trained by its own loss (`memory_vote_training separate`), the neighbours' values "
                  "not mixed into the class token (`combiner vote`) or mixed in (gate); `_k32`: 32 pixel neighbours instead of 10; `_tv`: `_vs` with its vote weight re-chosen on validation after training. "
                  "Session 16: `_pb` the pixel read with a learned pixel-similarity bias in its scores, `_cr` a pixel read re-weighed on "
                  "validation (query-key temperature, pixel bias and vote weight chosen together), `*_pixp` the case vote with its distance "
                  "power chosen on validation as well, `pixel_knn` that vote alone (no network). Session 17: `movit_cs_tok`, the "
                  "memorizing-transformer read (every token of the 4th of 6 blocks reads the most query-alike tokens of any other "
                  "training image, no label vote). Session 18: `*_ssl` the same networks fine-tuned from a trunk pre-trained "
                  "without labels on every training-split image (bundle `pretrain.json`, SimCLR-style, 30 epochs, one trunk per "
                  "dataset shared by the seeds; `_ssl10`: pre-trained on the 10% subset only), `_t01` / `_t0` with the trunk fine-tuned at 0.1 of the "
                  "learning rate or frozen (then the plain ViT is a linear probe and its features are the trunk's, so its k-NN "
                  "reference is `ssl_cs_knn`), `ssl_cs_knn` / `ssl_cs_pool10_knn` a k-NN on the trunk's features before any "
                  "fine-tuning (deterministic: one row). Session 19: `*_tr` the memory ViT fine-tuned from that trunk whose class token "
                  "reads the memory entries of its 10 nearest training images in a frozen copy of the trunk (`memory_retrieval trunk`, "
                  "their trunk cosine as a learned score bias), `_trl` with the neighbours' class embeddings in the read "
                  "(`memory_labels`), `_nv` without the label vote, `_tr_vs` the read feeding only the vote, trained by its own loss; `*_trunkvote` a fine-tuned plain ViT fused with a k-NN vote "
                  "(k = 10) in the frozen trunk, its weight chosen on validation (no memory inside the network). Session 20: `*_trunkvotep` "
                  "the same with the distance power of its neighbour weights chosen on validation too: the bundle's trunk-space case vote "
                  "(`case_vote.json --case_vote_space trunk`) as it ships; `*_trunkvote` rows since session 20 are made by the same class at power 1. "
                  "Session 21: `ssl_cs_all5_knn` / `vit_cs_ssl_all5` the k-NN on, and the plain ViT fine-tuned from, a trunk pre-trained on "
                  "every training-split image for 5 epochs (`cs_all5`) instead of the 10% subset for 30. Session 22: `movit_cs_ssl_all5` "
                  "the memory ViT fine-tuned from that trunk; `cs_all10` the same images for 10 epochs (`ssl_cs_all10_knn`, `vit_cs_ssl_all10`). "
                  "Session 23: `cs_all5_groups` the `cs_all5` recipe whose contrastive loss takes no view of another image of the same "
                  "source group as a negative (bundle `pretrain_source_groups`; LC25000's augmented copies of one tile), "
                  "`ssl_cs_all5_groups_knn` the k-NN on it. Session 24: which part of training with the memory gives `movit_cs_ssl_all5` / "
                  "`movit_cs_ssl10` their better weights: `_nv` the memory read alone (no label vote in training or test), `_vote` the "
                  "vote alone (`combiner vote`: the read's attention weighs the neighbours' labels, the class token keeps its own features), `_nv_rand` the read alone of entries unrelated to the image (`memory_retrieval random`, a control). Session 25: "
                  "`vit_cs_ssl_all5_d2` / `vit_cs_ssl10_d2` the plain ViT with dropout 0.2 instead of the recipe's 0.1 (does more of the plain recipe's own "
                  "regulariser do what the read does?). Session 26: `vit_cs_ssl_all5_mx` / `vit_cs_ssl10_mx` the plain ViT trained with mixup "
                  "(bundle `mixup_alpha` 0.2); `ssl_cs_pool10_s1_knn` the k-NN on the `cs_pool10` trunk pre-trained again with seed 1, "
                  "`vit_cs_ssl10_trunkvotep_cs_pool10_s1` the plain ViT (fine-tuned from the seed-0 trunk) fused with the case vote in it, "
                  "`vit_cs_ssl10s1` the plain ViT fine-tuned from the seed-1 trunk and `vit_cs_ssl10s1_trunkvotep` it fused with the vote in that trunk. "
                  "Session 35: `movit_cs_k8` / `movit_cs_k128`, the memory ViT whose class token reads its 8 or 128 nearest entries instead of 32 "
                  "(`memory_k`; 128 covers the whole memory at brain MRI 3%)."),
    "second_trunk": ("PBC 3% from a second `cs_all5` trunk",
                     "Session 27: the runs folder of earlier sessions was gone, so PBC's `cs_all5` trunk was pre-trained again "
                     "by the same recipe and seed (`run_regimes.py`, the bundle's pretrain.json; 2 threads; pre-training is repeatable at "
                     "a fixed thread count and differs between 1 and 2 threads: benchmarks/results/pretrain_repeatability.md, design.md \"Session 29\"). It is not the same trunk: its frozen k-NN at 3% scores 0.831 against the committed 0.837. Every row here is "
                     "fine-tuned from, or votes in, that second trunk, so compare them with each other and not with the same "
                     "names in [case_vote.md](case_vote.md). `vit_cs_ssl_all5` the plain ViT, `_mx` trained with mixup 0.2, "
                     "`_mx4` with mixup 0.4, `_steps3x` with three times the steps; `_tta` the same trained network with each "
                     "test image scored as the mean softmax over its 8 flips and right-angle turns (bundle 0.13.0 "
                     "`eval_dihedral`); `_knn` / `_trunkvotep` as in case_vote.md. Paired per seed with "
                     "`python benchmarks/regimes/paired_deltas.py A B --csv benchmarks/results/second_trunk.csv`. "
                     "Session 28, self-training: `_st` students fine-tuned from the same trunk on the 3% labelled images plus the "
                     "unlabelled rest of the training split wherever the teacher `vit_cs_ssl_all5_mx_tta` (same seed) gives a class "
                     "probability >= 0.9, under its label (bundle 0.14.0 pseudo_label.json; true labels of those images unread). "
                     "`vit_cs_ssl_all5_mx_st` the plain ViT with mixup 0.2 (the teacher's recipe) at the 3% cells' steps, "
                     "`_mx_st_steps3x` with three times them, against `vit_cs_ssl_all5_mx_steps3x` (the teacher's recipe given the same); `movit_cs_ssl_all5_st` the memory ViT as the student "
                     "(its memory holds the pseudo-labelled images too; no mixup, which the memory refuses; run alone with 2 threads). "
                     "`train_images` counts the labelled images only; `epochs` shows the larger training set. How many images joined "
                     "and how many of their labels are right: [pseudo_label_quality_pbc_blood_cells_96_r3.md](pseudo_label_quality_pbc_blood_cells_96_r3.md). "
                     "Session 29: seeds 1-2 of `vit_cs_ssl_all5_mx_steps3x` and seed 1 of `_mx_st_steps3x` (their 3x step budget is "
                     "1,500 steps, so seed 1's larger student set trains 19 epochs where seed 0's trains 24); the memory ViT `movit_cs_ssl_all5` "
                     "(memory attention, the bundle default) from this trunk, and its 8-view score. "
                     "Session 30: `vit_cs_ssl_all5_mx_st2_steps3x` a second round of self-training (the teacher is the 3x student "
                     "`vit_cs_ssl_all5_mx_st_steps3x` over the 8 views, same seed; same recipe and steps); `_ema` the plain and "
                     "memory ViTs with an average of the weights (bundle 0.16.0 `weight_average_decay` 0.99) validated and kept. "
                     "Session 31: `vit_cs_ssl_all5_mx_stq5_steps3x` the first round's student (teacher `vit_cs_ssl_all5_mx_tta`, "
                     "recipe and 3x steps) with the unlabelled images chosen by a quota per class instead of one threshold: each "
                     "class the 0.5 x its labelled share x 11,589 images the teacher assigns to it most confidently (bundle 0.17.0 "
                     "`pseudo_class_quota` 0.5, `pseudo_threshold` 0); `vit_cs_ssl_all5_cons` the plain ViT with consistency training on "
                     "the unlabelled rest (bundle 0.17.0 `unlabelled_ratio` 1, `consistency_threshold` 0.95; FixMatch-style, the "
                     "network labels them itself each step; same steps), `_cons85` the same at threshold 0.85. "
                     "Session 32: `movit_cs_ssl_all5_cons85` the memory ViT with the same consistency training (bundle 0.18.0: the "
                     "unlabelled views read the memory and are never written to it); `vit_cs_ssl_all5_mx_st85_steps3x` the first "
                     "round's 3x student with the pseudo-label threshold at 0.85 instead of 0.9 (label smoothing caps the teacher's "
                     "top probability near 0.9125: pseudo_label_quality_pbc_blood_cells_96_r3.md). "
                     "Session 33: `movit_cs_ssl_all5_st85` the memory ViT as the student of the 0.85 pseudo-labels (teacher "
                     "`vit_cs_ssl_all5_mx_tta`, same seed; its memory holds the pseudo-labelled images too), against "
                     "`vit_cs_ssl_all5_st85` the plain ViT on the same manifest; both without mixup (which the memory refuses), at "
                     "the 3% cells' steps."),
    "more_seeds": ("Seeds beyond 0-2 for the cells where the memory read's lead is smaller than the seed spread",
                   "Session 25: seeds 3, 4 and 5 of the PBC 10% plain ViT from the `cs_all5` trunk, its k-NN and the memory ViT "
                   "trained with its read alone (`movit_cs_ssl_all5_nv`); seeds 3 and 4 of the LC25000 1% plain ViT from the `cs_pool10` "
                   "trunk, its k-NN, `movit_cs_ssl10_nv` and the plain ViT with dropout 0.2 (`vit_cs_ssl10_d2`). Session 26: the "
                   "same cells' trunk case vote (`_trunkvotep`), the LC25000 plain ViT with mixup (`vit_cs_ssl10_mx`) and the case vote "
                   "in the seed-1 trunk (`_trunkvotep_cs_pool10_s1`), the plain ViT fine-tuned from that trunk (`vit_cs_ssl10s1`), its "
                   "k-NN and its own trunk vote. Session 35: seeds 3, 4 and 5 of PneumoniaMNIST 1% and brain MRI 1% (`vit_cs`, "
                   "`movit_cs`, `vit_cs_knn`, geometry-only), the cells where the memory ViT trained from scratch leads, and seeds 3 "
                   "and 4 of PneumoniaMNIST 3% (the lead there was +1.1 over seeds 0-2). Session 36: PneumoniaMNIST 3% seed 5, and "
                   "seeds 3-5 of the 1% cells with the bundle's default jitter (`vit_cs_ia`, `movit_cs_ia`, `vit_cs_ia_knn`; their seeds "
                   "0-2 are in [ablations.md](ablations.md)). Seeds 0-2 of the "
                   "same models are in [case_vote.md](case_vote.md). Paired over every seed, e.g. "
                   "`python benchmarks/regimes/paired_deltas.py vit_cs_ssl_all5 movit_cs_ssl_all5_nv "
                   "--csv benchmarks/results/case_vote.csv benchmarks/results/more_seeds.csv`."),
}
# what a reader must know beside a dataset's numbers: published references quoted for context (not made
# here; different budgets and protocols) and known properties of its splits (each with its command)
DATASET_NOTES = {
    "pneumoniamnist": "Published reference for context (MedMNIST v2, Yang et al., Scientific Data 2023; ResNet-18 at 28 px "
    "trained on the full official training split): ACC 0.854 / AUC 0.944. "
    "Our splits are the official ones, less 29 exact duplicates (data_manifests/README.md).",
    "brain_tumor_mri": "The official Testing split is drawn unlike Training: its tumour slices are brighter and mostly "
    "non-square, like the training split's no_tumor slices, and a pixel classifier tells a class's training images "
    "from its test images with cross-validated AUC 0.77-0.93 "
    "([split_shift_brain_tumor_mri.md](split_shift_brain_tumor_mri.md), `python benchmarks/regimes/split_shift.py`). "
    "Test ACC near or below chance (0.25) for every model measures this shift, not what was learnt; the validation "
    "split (carved from Training) is in-distribution; `brain_tumor_mri_training` below is the dataset on a split "
    "that is.",
    "brain_tumor_mri_training": "The Training folder alone, split 70/10/20 with re-saved copies and adjacent slices "
    "grouped into one split (data_manifests/README.md); slices of one patient further apart can still fall in different "
    "splits (the dataset has no patient identifiers), so this measures learning from few images of one source.",
}


# issue #6's targets, per results file: (memory network, plain network, k-NN reference over the plain one), one
# section per memory design; in the ablations, the jittered pair and session 13's neighbour readout (same recipe);
# session 14's pixel-space case vote on top of the memory ViT and of the plain ViT (``*_pix``); session 15's memory ViT
# reading its pixel neighbours in attention (``movit_cs_px``); session 16's case vote with its distance power chosen on
# validation (``*_pixp``), the pixel read with a learned pixel bias (``_pb``) and re-weighed on validation (``_cr``); session
# 17's memorizing-transformer read (``movit_cs_tok``); session 18's self-supervised trunk (``*_ssl``, against its own
# pre-trained plain ViT); session 19's read of the neighbours found in the frozen trunk (``*_tr``), also against the plain
# network fused with a k-NN vote in that trunk (``*_trunkvote``) and that k-NN alone; session 20's trunk-space case vote
# (``*_trunkvote``, ``*_trunkvotep``: the bundle's, distance power chosen on validation) as the memory, against its own network
TARGET_MODELS = {
    "regimes_conv_stem": [("movit_cs", "vit_cs", "vit_cs_knn"), ("movit_cs_pix", "vit_cs", "vit_cs_knn"), ("vit_cs_pix", "vit_cs", "vit_cs_knn"),
                          ("movit_cs_pixp", "vit_cs", "vit_cs_knn"), ("vit_cs_pixp", "vit_cs", "vit_cs_knn"),
                          # session 21: the trunk-space case vote (trunk ``cs``) fused with the networks trained from scratch
                          ("vit_cs_trunkvotep_cs", "vit_cs", "vit_cs_knn"), ("movit_cs_trunkvotep_cs", "vit_cs", "vit_cs_knn")],
    "regimes": [("movit", "vit", "vit_knn")],
    "case_vote": [("movit_cs", "vit_cs", "vit_cs_knn"), ("movit_cs_pix", "vit_cs", "vit_cs_knn"), ("vit_cs_pix", "vit_cs", "vit_cs_knn"),
                  ("movit_cs_px", "vit_cs", "vit_cs_knn"), ("movit_cs_px_pix", "vit_cs", "vit_cs_knn"), ("movit_cs_px_vs", "vit_cs", "vit_cs_knn"),
                  ("movit_cs_px_sep", "vit_cs", "vit_cs_knn"), ("movit_cs_px_vs_k32", "vit_cs", "vit_cs_knn"),
                  ("movit_cs_px_vs_tv", "vit_cs", "vit_cs_knn"), ("movit_cs_px_vs_pb", "vit_cs", "vit_cs_knn"),
                  ("movit_cs_px_vs_cr", "vit_cs", "vit_cs_knn"), ("movit_cs_pixp", "vit_cs", "vit_cs_knn"), ("vit_cs_pixp", "vit_cs", "vit_cs_knn"),
                  ("movit_cs_tok", "vit_cs", "vit_cs_knn"), ("movit_cs_ssl", "vit_cs_ssl", "vit_cs_ssl_knn"),
                  ("movit_cs_ssl_t01", "vit_cs_ssl_t01", "vit_cs_ssl_t01_knn"), ("movit_cs_ssl_t0", "vit_cs_ssl_t0", "ssl_cs_knn"),
                  ("movit_cs_ssl10", "vit_cs_ssl10", "vit_cs_ssl10_knn"),
                  ("movit_cs_ssl_t01_tr", "vit_cs_ssl_t01", "vit_cs_ssl_t01_knn"), ("movit_cs_ssl_t01_tr_tv", "vit_cs_ssl_t01", "vit_cs_ssl_t01_knn"),
                  ("movit_cs_ssl_tr", "vit_cs_ssl", "vit_cs_ssl_knn"), ("movit_cs_ssl10_tr", "vit_cs_ssl10", "vit_cs_ssl10_knn"),
                  ("movit_cs_ssl10_tr_tv", "vit_cs_ssl10", "vit_cs_ssl10_knn"),
                  ("movit_cs_ssl_t01_trl", "vit_cs_ssl_t01", "vit_cs_ssl_t01_knn"), ("movit_cs_ssl_t01_trl_nv", "vit_cs_ssl_t01", "vit_cs_ssl_t01_knn"),
                  # the stricter reading (a memory that only adds a nearest-neighbour vote is not the product): the trunk
                  # read against its plain network fused with a k-NN vote in the same frozen trunk, and that k-NN alone
                  ("movit_cs_ssl_t01_tr", "vit_cs_ssl_t01_trunkvote", "ssl_cs_knn"), ("movit_cs_ssl_t01_trl_nv", "vit_cs_ssl_t01_trunkvote", "ssl_cs_knn"),
                  ("movit_cs_ssl_tr", "vit_cs_ssl_trunkvote", "ssl_cs_knn"), ("movit_cs_ssl10_tr", "vit_cs_ssl10_trunkvote", "ssl_cs_pool10_knn"),
                  # the case memory in the frozen trunk as the product's memory: the fine-tuned plain network with it against without it
                  ("vit_cs_ssl_t01_trunkvote", "vit_cs_ssl_t01", "vit_cs_ssl_t01_knn"), ("vit_cs_ssl_t01_trunkvotep", "vit_cs_ssl_t01", "vit_cs_ssl_t01_knn"),
                  ("vit_cs_ssl_trunkvote", "vit_cs_ssl", "vit_cs_ssl_knn"), ("vit_cs_ssl_trunkvotep", "vit_cs_ssl", "vit_cs_ssl_knn"),
                  ("vit_cs_ssl10_trunkvote", "vit_cs_ssl10", "vit_cs_ssl10_knn"), ("vit_cs_ssl10_trunkvotep", "vit_cs_ssl10", "vit_cs_ssl10_knn"),
                  ("vit_cs_ssl_all5_trunkvotep", "vit_cs_ssl_all5", "vit_cs_ssl_all5_knn"),
                  # session 22: the memory ViT fine-tuned from PBC's cs_all5 trunk (alone and with the trunk case vote), against
                  # its plain ViT and, by the stricter reading, against that ViT with the case vote; the longer cs_all10 trunk
                  ("movit_cs_ssl_all5", "vit_cs_ssl_all5", "vit_cs_ssl_all5_knn"), ("movit_cs_ssl_all5", "vit_cs_ssl_all5_trunkvotep", "ssl_cs_all5_knn"),
                  ("movit_cs_ssl_all5_trunkvotep", "vit_cs_ssl_all5", "vit_cs_ssl_all5_knn"),
                  ("vit_cs_ssl_all10_trunkvotep", "vit_cs_ssl_all10", "vit_cs_ssl_all10_knn"),
                  # session 24: the memory ViT trained with its read alone or its vote alone
                  ("movit_cs_ssl_all5_nv", "vit_cs_ssl_all5", "vit_cs_ssl_all5_knn"), ("movit_cs_ssl_all5_vote", "vit_cs_ssl_all5", "vit_cs_ssl_all5_knn"),
                  ("movit_cs_ssl_all5_nv_rand", "vit_cs_ssl_all5", "vit_cs_ssl_all5_knn"),
                  ("movit_cs_ssl10_nv", "vit_cs_ssl10", "vit_cs_ssl10_knn"), ("movit_cs_ssl10_vote", "vit_cs_ssl10", "vit_cs_ssl10_knn"),
                  # session 26: the case vote over the plain ViT fine-tuned from LC25000's seed-1 trunk, in that trunk
                  ("vit_cs_ssl10s1_trunkvotep", "vit_cs_ssl10s1", "vit_cs_ssl10s1_knn")],
    "second_trunk": [("movit_cs_ssl_all5", "vit_cs_ssl_all5", "vit_cs_ssl_all5_knn"), ("movit_cs_ssl_all5_ema", "vit_cs_ssl_all5_ema", "vit_cs_ssl_all5_knn"),
                     ("movit_cs_ssl_all5_cons85", "vit_cs_ssl_all5_cons85", "vit_cs_ssl_all5_knn"),
                     ("movit_cs_ssl_all5_st85", "vit_cs_ssl_all5_st85", "vit_cs_ssl_all5_knn"),
                     ("vit_cs_ssl_all5_trunkvotep", "vit_cs_ssl_all5", "vit_cs_ssl_all5_knn"),
                     ("vit_cs_ssl_all5_mx_trunkvotep", "vit_cs_ssl_all5_mx", "vit_cs_ssl_all5_mx_knn")],
    "more_seeds": [("movit_cs_ssl_all5_nv", "vit_cs_ssl_all5", "vit_cs_ssl_all5_knn"), ("movit_cs_ssl10_nv", "vit_cs_ssl10", "vit_cs_ssl10_knn"),
                   ("vit_cs_ssl10s1_trunkvotep", "vit_cs_ssl10s1", "vit_cs_ssl10s1_knn")],
    "ablations": [("movit_cs_ia", "vit_cs_ia", "vit_cs_ia_knn"), ("movit_cs_ia_nh", "vit_cs_ia", "vit_cs_ia_knn"),
                  ("movit_cs_ia_pix", "vit_cs_ia", "vit_cs_ia_knn"), ("vit_cs_ia_pix", "vit_cs_ia", "vit_cs_ia_knn"),
                  ("movit_cs_ia_pixp", "vit_cs_ia", "vit_cs_ia_knn"), ("vit_cs_ia_pixp", "vit_cs_ia", "vit_cs_ia_knn")],
}


def mean_of(group: list[dict], metric: str) -> float:
    return statistics.mean(float(r[metric]) for r in group)


PIXEL_KNN = "pixel_knn"  # no network: the regime's thumbnails, k = 10, distance power chosen on validation (session 16)


def target_lines(cells: dict, memory: str, plain: str, knn: str) -> list[str]:
    """Markdown for issue #6's targets, computed from the cells (test split, points = 100 x difference of means).

    1. the memory network beats the plain one and the k-NN reference in mean ACC and mean AUC at every regime <= 10%;
    2. on pbc_blood_cells_96 the memory network at 3% is within 2 ACC points of the plain network at 100%;
    3. prototypes lose at most 0.5 ACC points against the full memory (read speed: memory_speed*.md).
    """
    pts = lambda a, b: f"{100 * (a - b):+.1f}"  # noqa: E731
    lines = [f"## Targets (issue #6) for `{memory}`, computed from the rows above", "",
             f"1. `{memory}` ahead of `{plain}` and `{knn}` in mean test ACC and mean AUC at every regime <= 10% (points; "
             "per-seed ACC differences pair runs of the same seed and regime split).", "",
             f"| dataset | regime % | n | ACC − {plain} | ACC − {knn} | AUC − {plain} | AUC − {knn} | per-seed ACC − {plain} | met | ACC / AUC − {PIXEL_KNN} |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    cells_met = []
    for dataset, model, regime in sorted(cells):
        if model != memory or regime > 10 or (dataset, plain, regime) not in cells or (dataset, knn, regime) not in cells:
            continue
        mem, pl, kn = cells[(dataset, memory, regime)], cells[(dataset, plain, regime)], cells[(dataset, knn, regime)]
        deltas = [mean_of(mem, m) - mean_of(ref, m) for m in ("acc", "auc") for ref in (pl, kn)]
        by_seed = {r["seed"]: float(r["acc"]) for r in pl}
        paired = ", ".join(pts(float(r["acc"]), by_seed[r["seed"]]) for r in sorted(mem, key=lambda r: int(r["seed"])) if r["seed"] in by_seed)
        met = all(d > 0 for d in deltas)
        cells_met.append(met)
        pix = cells.get((dataset, PIXEL_KNN, regime))
        versus_pixels = " / ".join(pts(mean_of(mem, m), mean_of(pix, m)) for m in ("acc", "auc")) if pix else "-"
        lines.append(f"| {dataset} | {regime} | {len(mem)} | " + " | ".join(f"{100 * d:+.1f}" for d in deltas) + f" | {paired} | {'yes' if met else 'no'} | {versus_pixels} |")
    lines += ["", f"Met in {sum(cells_met)} of {len(cells_met)} measured cells. The last column (not part of the target) "
              f"compares with `{PIXEL_KNN}`, a nearest-neighbour classifier on the raw 28-px thumbnails (no network), where measured.", ""]  # fmt: skip
    full, small = cells.get(("pbc_blood_cells_96", plain, 100)), cells.get(("pbc_blood_cells_96", memory, 3))
    if full and small:
        gap = mean_of(full, "acc") - mean_of(small, "acc")
        lines += [f"2. PBC: `{memory}` at 3% {mean_of(small, 'acc'):.3f} against `{plain}` at 100% {mean_of(full, 'acc'):.3f}: "
                  f"{100 * gap:.1f} points behind (target: within 2): {'met' if gap <= 0.02 else 'not met'}.", ""]  # fmt: skip
    proto = [(d, g) for d, m, g in sorted(cells) if m == f"{memory}_proto" and (d, memory, g) in cells]
    if proto:
        lines += [f"3. `{memory}_proto` (256 prototypes) against the full memory, mean test ACC (target: at most 0.5 points lost):", "",
                  "| dataset | regime % | n | ACC prototypes − full | met |", "|---|---|---|---|---|"]  # fmt: skip
        for d, g in proto:
            diff = mean_of(cells[(d, f"{memory}_proto", g)], "acc") - mean_of(cells[(d, memory, g)], "acc")
            lines.append(f"| {d} | {g} | {len(cells[(d, f'{memory}_proto', g)])} | {100 * diff:+.1f} | {'yes' if diff >= -0.005 else 'no'} |")
        lines.append("")
    return lines


def jitter_of(recipes: dict, dataset: str, model: str, regime: int) -> str:
    """A cell's jitter: trained cells from the audit, k-NN, pixel-vote, tuned-vote, calibrated-read and eight-view cells that of the
    network they read, logreg and pixel_knn none; a k-NN on a self-supervised trunk (``ssl_*_knn``) had no labelled
    training, only the pre-training's views (which jitter)."""
    if model in ("logreg", PIXEL_KNN):
        return "none"
    if model.startswith("ssl_") and model.endswith("_knn"):
        return "views only"
    from run_regimes import trunk_vote_cell  # the driver's own reading of a model name (main put its folder on the path)

    cell = trunk_vote_cell(model)
    network = cell.network if cell else model.split("_knn")[0]
    for suffix in ("_pixp", "_pix", "_tv", "_cr", "_tta"):
        network = network.removesuffix(suffix)
    return recipes.get((dataset, network, regime), "?")


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", default=str(REPO / "benchmarks/results/regimes.csv"))
    args = p.parse_args()
    name = Path(args.csv).stem
    title, note = HEADINGS.get(name, (name, ""))
    rows = list(csv.DictReader(open(args.csv)))
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        cells[(r["dataset"], r["model"], int(r["regime"]))].append(r)
    import monai
    import torch

    from medmem.atomic import atomic_path, write_text_atomic

    lines = [
        f"# {title}",
        "",
        "Made by `python benchmarks/regimes/run_regimes.py` (see its `--help`; each row of",
        f"`{Path(args.csv).name}` is one (dataset, model, regime, seed) cell) and summarised by",
        f"`python benchmarks/regimes/report.py --csv benchmarks/results/{Path(args.csv).name}`. Test split, mean ± standard deviation over seeds (n = seeds).",
        f"Machine: {platform.machine()}, 2 CPU cores, no GPU; torch {torch.__version__}, MONAI {monai.__version__}.",
        "",
    ] + ([note, ""] if note else [])
    # what each trained cell really trained with (bundle < 0.3.3 read the text 'false' as true)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from recipe_audit import audit

    recipes = {k[1:]: v["jitter"] for k, v in audit(REPO / "runs" / "regimes").items() if k[0] == Path(args.csv).name}
    lines += [
        "Augmentation: every trained row had right-angle turns and flips, and the `jitter` column says whether it also had the",
        "gamma/colour jitter, whatever the model's name says (until bundle 0.3.3 the text `false` was read as true;",
        "[recipe_audit.md](recipe_audit.md), `python benchmarks/regimes/recipe_audit.py`). Compare cells of one recipe.",
        "",
    ]
    for dataset in sorted({k[0] for k in cells}):
        lines += [f"## {dataset}", "", "| model | regime % | train images | n | ACC | macro AUC | macro F1 | steps | jitter | wall s (mean) |", "|---|---|---|---|---|---|---|---|---|---|"]
        models = MODELS + sorted({k[1] for k in cells if k[0] == dataset} - set(MODELS))
        for model in models:
            for regime in sorted({k[2] for k in cells if k[0] == dataset}):
                group = cells.get((dataset, model, regime))
                if not group:
                    continue
                acc, auc, f1 = ([float(r[m]) for r in group] for m in ("acc", "auc", "f1"))
                epochs = group[0]["epochs"]
                lines.append(
                    f"| {model} | {regime} | {group[0]['train_images']} | {len(group)} | {mean_std(acc)} | {mean_std(auc)} | {mean_std(f1)} | "
                    f"{epochs if epochs != '0' else '-'} | {jitter_of(recipes, dataset, model, regime)} | "
                    f"{statistics.mean(float(r['wall_s']) for r in group):.0f} |"
                )
        if dataset in DATASET_NOTES:
            lines += ["", DATASET_NOTES[dataset]]
        lines += ["", f"![{dataset}]({name}_{dataset}.png)", ""]
        plot(dataset, cells, Path(args.csv).parent / f"{name}_{dataset}.png", atomic_path, models)
    for memory, plain, knn in TARGET_MODELS.get(name, []):
        if any(k[1] == memory for k in cells):
            lines += target_lines(cells, memory, plain, knn)
    lines = [ln.replace("| steps |", "| epochs |") for ln in lines]
    write_text_atomic("\n".join(lines) + "\n", Path(args.csv).with_suffix(".md"))
    print("\n".join(lines))


def plot(dataset: str, cells: dict, path: Path, atomic_path, models: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    # a results file can hold 30+ models: colours of tab20 with a marker per round of it, the legend beside the axes
    colours, markers = plt.get_cmap("tab20").colors, "osD^v<>"
    for metric, ax in zip(("acc", "auc"), axes):
        for i, model in enumerate(models):
            regimes = sorted(k[2] for k in cells if k[0] == dataset and k[1] == model)
            if not regimes:
                continue
            values = [[float(r[metric]) for r in cells[(dataset, model, g)]] for g in regimes]
            means = [statistics.mean(v) for v in values]
            stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
            style = {"color": colours[i % len(colours)], "marker": markers[(i // len(colours)) % len(markers)]}
            ax.errorbar(regimes, means, yerr=stds, capsize=3, label=model, **style)
        ax.set_xscale("log")
        ticks = sorted({k[2] for k in cells if k[0] == dataset})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("training data (% of the training split)")
        ax.set_ylabel(f"test {metric.upper()}")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, ncol=1 + len(labels) // 24)
    fig.suptitle(dataset)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
