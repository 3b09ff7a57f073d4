"""Data-regime study driver: trains and evaluates every (dataset, model, regime, seed) cell through the
MONAI bundle, and appends one row per cell to ``benchmarks/results/regimes.csv``.

Cells already in the CSV are skipped, so the study resumes after an interruption. Every row can be
re-made alone, e.g.::

    python benchmarks/regimes/run_regimes.py --dataset pbc_blood_cells_96 --models vit movit --regimes 3 --seeds 0

Models: ``vit`` (memory off), ``movit`` (full memory), ``movit_proto`` (movit after prototype
summarisation), ``movit_labels`` / ``movit_labels_proto`` (ablation: label-aware memory), ``resnet18``
(MONAI ResNet-18, the CNN reference), ``vit_knn`` (k-NN on the trained vit's class-token features), ``logreg`` (logistic
regression on 28 px pixels), ``vit_knn_vote`` (the plain ViT's softmax averaged with that k-NN vote);
``vit_cs_knn`` / ``vit_cs_knn_vote`` the same over the conv-stem plain ViT (``vit_cs``); ``<network>_pix`` (any trained
network, e.g. ``movit_cs_pix``: its output fused with a pixel-space memory vote of its training images,
``medmem.memory.pixel_vote``, the weight chosen on validation; ``<network>_pixp``: its distance power too, as the bundle
does since 0.6.0); ``pixel_knn`` (no network: that pixel-space vote alone); ``<network>_ssl`` (fine-tuned from a trunk
pre-trained without labels, bundle pretrain.json) and ``ssl_cs_knn`` (k-NN on that trunk's features, no fine-tuning); ``<network>_tv`` / ``<network>_cr`` (a trained
memory network's vote weight, or its pixel or trunk read's scalars and vote weight, re-chosen on validation);
``movit_cs_ssl*_tr`` (the class token reads the training images nearest in the frozen trunk, ``memory_retrieval
"trunk"``) and ``<network>_trunkvote`` (a fine-tuned network fused with a k-NN vote in that frozen trunk;
``_trunkvotep``: the distance power chosen on validation too; ``<network>_trunkvotep_<recipe>``: any trained network, e.g.
one trained from scratch, fused with the vote in the trunk ``PRETRAIN[recipe]``); ``<network>_tta`` (a trained network's
test images scored averaged over their 8 flips and right-angle turns, ``medmem.engine.dihedral``). Post-hoc rows train
nothing; they read the finished run of their network. Within a regime all networks get the same steps, schedule and
augmentation; model selection uses validation only and the test split is read once per row.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "movit_classification"
CONFIGS = BUNDLE / "configs"
COLUMNS = ["dataset", "model", "regime", "seed", "train_images", "epochs", "acc", "auc", "f1", "wall_s"]

# per-dataset input settings (same for every model)
DATASETS = {
    "pbc_blood_cells_96": {"image_size": 64, "patch_size": 8, "in_channels": 3, "rotate90": True},
    "lc25000_64": {"image_size": 64, "patch_size": 8, "in_channels": 3, "rotate90": True},
    "brain_tumor_mri": {"image_size": 64, "patch_size": 8, "in_channels": 1, "rotate90": True},
    "brain_tumor_mri_training": {"image_size": 64, "patch_size": 8, "in_channels": 1, "rotate90": True},
    "pneumoniamnist": {"image_size": 28, "patch_size": 4, "in_channels": 1, "rotate90": True},
}
# rotate90 True for the grayscale sets too: this driver passed False for them until session 13, and the bundle read the
# text 'false' as true (fixed in bundle 0.3.3), so every committed row was trained with right-angle turns; kept so
# that a rerun reproduces them (docs/design.md, "Session 13")
# optimiser steps per regime (percent of the training split): the same for every network
STEPS = {1: 300, 3: 500, 10: 800, 30: 1000, 100: 1500}
BATCH = 64
# bundle overrides of each trained network; ``*_proto`` rows reuse the trained model of their prefix
# the memory ViT as chosen in session 2 (docs/design.md): class tokens retrieve other images' class
# tokens by key similarity, and the memory attention's label vote is half of the output
MOVIT = {"memory_mode": "full", "memory_match": "same_token", "memory_retrieval": "key", "memory_vote": 0.5}
PIXEL_READ = {**MOVIT, "stem": "conv", "memory_retrieval": "pixels", "memory_k": 10}  # session 15 (movit_cs_px below)
TRUNK_READ = {**MOVIT, "stem": "conv", "pretrain": "cs", "memory_retrieval": "trunk", "memory_k": 10, "pixel_bias": True}  # session 19
# session 18: self-supervised pre-training of the trunk (bundle pretrain.json) on every training-split image, labels unread;
# one trunk per dataset (seed 0, unless a recipe names another) shared by the fine-tuning seeds, so their spread leaves out
# the pre-training's own
PRETRAIN = {"cs": {"stem": "conv", "memory_mode": "off", "pretrain_epochs": 30},
            # the 10% subset only (which holds the 1% and 3% ones): for the large training splits (LC25000, PBC) on this CPU
            "cs_pool10": {"stem": "conv", "memory_mode": "off", "pretrain_epochs": 30, "pretrain_regime": 10},
            # session 21: every training-split image for 5 epochs (PBC: 465 steps against cs_pool10's 270, ten times the images)
            "cs_all5": {"stem": "conv", "memory_mode": "off", "pretrain_epochs": 5},
            # session 22: the same images for twice the epochs (PBC: 930 steps): does the trunk gain from steps alone?
            "cs_all10": {"stem": "conv", "memory_mode": "off", "pretrain_epochs": 10},
            # session 23: cs_all5 whose contrastive loss takes no view of the same source group (the manifest's `group`:
            # LC25000's augmented copies of one tile) as a negative; on a manifest without groups it is cs_all5
            "cs_all5_groups": {"stem": "conv", "memory_mode": "off", "pretrain_epochs": 5, "pretrain_source_groups": True},
            # session 26: cs_pool10 pre-trained again with seed 1: how much of what the trunk gives is the pre-training's seed
            "cs_pool10_s1": {"stem": "conv", "memory_mode": "off", "pretrain_epochs": 30, "pretrain_regime": 10, "seed": 1}}
NETWORKS = {
    "vit": {"memory_mode": "off"},
    "movit": MOVIT,
    "movit_query": {"memory_mode": "full"},  # the first design: query-key retrieval over all tokens, no vote
    # ablations of the memory design (rows go to ablations.csv with --out)
    "movit_labels": {"memory_mode": "full", "memory_labels": True},  # label-aware memory reads
    "movit_cls": {"memory_mode": "full", "memory_match": "same_token"},  # class token reads other images' class tokens
    "movit_cls_labels": {"memory_mode": "full", "memory_match": "same_token", "memory_labels": True},
    "movit_kk": {"memory_mode": "full", "memory_match": "same_token", "memory_retrieval": "key"},  # neighbours: images alike
    "movit_kk_labels": {"memory_mode": "full", "memory_match": "same_token", "memory_retrieval": "key", "memory_labels": True},
    # memory contrastive loss: keys trained so that retrieval finds same-class images (see docs/design.md)
    "movit_con": {"memory_mode": "full", "memory_match": "same_token", "memory_retrieval": "key", "memory_labels": True, "memory_contrast": 0.5},
    "movit_vote": {"memory_mode": "full", "memory_match": "same_token", "memory_retrieval": "key", "memory_vote": 0.5},  # = movit
    # the head trained on its own logits and the vote by its own cross-entropy; fused only at inference
    "movit_sep": {**MOVIT, "memory_vote_training": "separate"},
    "movit_m0": {**MOVIT, "atma_momentum": 0.0},  # ATMA off: plain overwrite
    "movit_joint": {**MOVIT, "combiner": "joint"},  # one softmax instead of the gate
    "movit_block4": {**MOVIT, "memory_blocks": [-2]},  # the memorising block one below the top
    "movit_k8": {**MOVIT, "memory_k": 8},
    "movit_k128": {**MOVIT, "memory_k": 128},
    # convolutional stem (strided 3x3 convolutions make the patch tokens): the same pair, more CNN prior
    "vit_cs": {"memory_mode": "off", "stem": "conv"},
    "movit_cs": {**MOVIT, "stem": "conv"},
    # the read feeds only the label vote; the class token's features stay the image's own
    "movit_cs_vote": {**MOVIT, "stem": "conv", "combiner": "vote"},
    # ... and the head trained on its own logits (as the plain ViT's), the vote by its own cross-entropy
    "movit_cs_vote_sep": {**MOVIT, "stem": "conv", "combiner": "vote", "memory_vote_training": "separate"},
    # the design ablations again with the default (conv) stem
    "movit_cs_m0": {**MOVIT, "stem": "conv", "atma_momentum": 0.0},
    "movit_cs_joint": {**MOVIT, "stem": "conv", "combiner": "joint"},
    "movit_cs_block4": {**MOVIT, "stem": "conv", "memory_blocks": [-2]},
    "movit_cs_k8": {**MOVIT, "stem": "conv", "memory_k": 8},
    "movit_cs_k128": {**MOVIT, "stem": "conv", "memory_k": 128},
    "resnet18": {"memory_mode": "off", "network_def#_target_": "medmem.networks.ResNetClassifier"},  # CNN reference
    # ... with the jitter: what the committed PneumoniaMNIST and brain MRI resnet18 rows trained with (see recipe_audit.py)
    "resnet18_ia": {"memory_mode": "off", "network_def#_target_": "medmem.networks.ResNetClassifier", "intensity_augment": True},
    # budget check: the default pair with three times the regime's optimiser steps (is a regime step- or data-limited?)
    "vit_cs_steps3x": {"memory_mode": "off", "stem": "conv", "step_scale": 3},
    "movit_cs_steps3x": {**MOVIT, "stem": "conv", "step_scale": 3},
    # ... with the jitter: what session 12's 3x rows trained with (the text 'false' was read as true; docs/design.md "Session 13")
    "vit_cs_ia_steps3x": {"memory_mode": "off", "stem": "conv", "step_scale": 3, "intensity_augment": True},
    "movit_cs_ia_steps3x": {**MOVIT, "stem": "conv", "step_scale": 3, "intensity_augment": True},
    # the default pair trained with gamma and colour jitter as well (bundle setting intensity_augment)
    "vit_cs_ia": {"memory_mode": "off", "stem": "conv", "intensity_augment": True},
    "movit_cs_ia": {**MOVIT, "stem": "conv", "intensity_augment": True},
    # without the right-angle turns (flips and the small affine stay): the pixel models see the scans upright, the
    # study's ViTs never did (session 14, benchmarks/regimes/other_space.py)
    "vit_cs_nr": {"memory_mode": "off", "stem": "conv", "rotate90": False},
    "movit_cs_nr": {**MOVIT, "stem": "conv", "rotate90": False},
    # session 15's design: the class token reads the memory entries of the k training images nearest in pixels
    # (standardised 28-px thumbnails, medmem.memory.pixel_index), the neighbours session 14 found to carry what the
    # network lacks; k = 10 as the post-hoc case vote (movit_cs_pix). Geometry-only, as its case_vote.csv references.
    "movit_cs_px": PIXEL_READ,
    # ... the head trained on its own logits and the vote by its own loss (fused only at inference), with the neighbours'
    # values mixed into the class token (gate) or not (combiner vote: the read only weighs the neighbours' labels)
    "movit_cs_px_sep": {**PIXEL_READ, "memory_vote_training": "separate"},
    "movit_cs_px_vs": {**PIXEL_READ, "memory_vote_training": "separate", "combiner": "vote"},
    "movit_cs_px_vs_k32": {**PIXEL_READ, "memory_k": 32, "memory_vote_training": "separate", "combiner": "vote"},
    # session 16: the neighbours' pixel similarity as a learned bias in the attention scores over them
    "movit_cs_px_vs_pb": {**PIXEL_READ, "memory_vote_training": "separate", "combiner": "vote", "pixel_bias": True},
    # session 17: the memorizing-transformer read the study had not measured: every token of a middle block (4th of 6)
    # reads the k most query-alike tokens of any other training image (local, patch-level neighbours found before the
    # top blocks fit the images); no label vote, so what it adds goes through the features. Geometry-only.
    "movit_cs_tok": {"memory_mode": "full", "stem": "conv", "memory_blocks": [-3], "memory_queries": "all", "memory_match": "any",
                     "memory_retrieval": "query", "memory_vote": 0.0},
    # session 13's design: no memory inside attention, the classifier reads the nearest training images' features and
    # labels (medmem.networks.neighbour_readout); the plain ViT's backbone and the same bank (ATMA, own image excluded).
    # With the jitter (the bundle's recipe), so its references are vit_cs_ia / movit_cs_ia / vit_cs_ia_knn.
    "movit_cs_ia_nh": {"memory_mode": "full", "memory_blocks": [], "memory_vote": 0.0, "stem": "conv", "readout": "neighbours", "intensity_augment": True},
    # ... its neighbours without their labels (only the learned function of the key difference): the labels' part
    "movit_cs_ia_nh_nolabels": {"memory_mode": "full", "memory_blocks": [], "memory_vote": 0.0, "stem": "conv", "readout": "neighbours",
                                "readout_labels": False, "intensity_augment": True},
    # session 18: the same pair fine-tuned from a self-supervised trunk (PRETRAIN above); same steps and augmentation
    "vit_cs_ssl": {"memory_mode": "off", "stem": "conv", "pretrain": "cs"},
    "movit_cs_ssl": {**MOVIT, "stem": "conv", "pretrain": "cs"},
    # ... the trunk fine-tuned at a tenth of the rate (head and memory read at the full rate): the brain MRI 1% plain ViT
    # fine-tuned at the full rate fell to its from-scratch ACC, below a k-NN on the frozen trunk (docs/design.md "Session 18")
    "vit_cs_ssl_t01": {"memory_mode": "off", "stem": "conv", "pretrain": "cs", "trunk_lr_scale": 0.1},
    "movit_cs_ssl_t01": {**MOVIT, "stem": "conv", "pretrain": "cs", "trunk_lr_scale": 0.1},
    # ... the trunk frozen (rate 0): the plain ViT is a linear probe of the self-supervised features, the memory ViT reads its
    # memory in them (keys of a trunk that never fits the labelled images)
    "vit_cs_ssl_t0": {"memory_mode": "off", "stem": "conv", "pretrain": "cs", "trunk_lr_scale": 0.0},
    "movit_cs_ssl_t0": {**MOVIT, "stem": "conv", "pretrain": "cs", "trunk_lr_scale": 0.0},
    # ... pre-trained on the 10% subset only (LC25000's 11,303 images are too many for this CPU)
    "vit_cs_ssl10": {"memory_mode": "off", "stem": "conv", "pretrain": "cs_pool10"},
    "movit_cs_ssl10": {**MOVIT, "stem": "conv", "pretrain": "cs_pool10"},
    # session 21: PBC's trunk from every training-split image (5 epochs): is the 10%-subset trunk weak for lack of images?
    "vit_cs_ssl_all5": {"memory_mode": "off", "stem": "conv", "pretrain": "cs_all5"},
    # session 22: the memory ViT (the product's memory) fine-tuned from that trunk, and the plain ViT from the longer one
    "movit_cs_ssl_all5": {**MOVIT, "stem": "conv", "pretrain": "cs_all5"},
    "vit_cs_ssl_all10": {"memory_mode": "off", "stem": "conv", "pretrain": "cs_all10"},
    # session 24: which part of training with the memory gives movit_cs_ssl_all5 (and movit_cs_ssl10) weights that beat
    # their plain ViT with the memory switched off at test: the read alone (no label vote in training or test), or the
    # vote alone (the read's attention weighs the neighbours' labels; the class token's features stay the image's own)
    "movit_cs_ssl_all5_nv": {**MOVIT, "stem": "conv", "pretrain": "cs_all5", "memory_vote": 0.0},
    "movit_cs_ssl_all5_vote": {**MOVIT, "stem": "conv", "pretrain": "cs_all5", "combiner": "vote"},
    # ... and the read alone with entries unrelated to the image (memory_retrieval "random", a study control): does the
    # read help training as a read of neighbours, or as any mixing of other images' values into the class token?
    "movit_cs_ssl_all5_nv_rand": {**MOVIT, "stem": "conv", "pretrain": "cs_all5", "memory_vote": 0.0, "memory_retrieval": "random"},
    # session 25: if the read helps training as a regulariser, does the plain recipe with more of its own regulariser get
    # there? The plain ViT with dropout 0.2 (everywhere the recipe's 0.1 applies: embeddings, attention weights, MLPs)
    "vit_cs_ssl_all5_d2": {"memory_mode": "off", "stem": "conv", "pretrain": "cs_all5", "dropout_rate": 0.2},
    "vit_cs_ssl10_d2": {"memory_mode": "off", "stem": "conv", "pretrain": "cs_pool10", "dropout_rate": 0.2},
    "movit_cs_ssl10_nv": {**MOVIT, "stem": "conv", "pretrain": "cs_pool10", "memory_vote": 0.0},
    # session 26: the regulariser that is closest to what the read does (mixing other training images into an image's
    # representation): mixup on the plain ViT's input and labels (bundle 0.12.0 mixup_alpha; 0.2, the original paper's
    # ImageNet setting), same trunk, recipe and steps
    "vit_cs_ssl_all5_mx": {"memory_mode": "off", "stem": "conv", "pretrain": "cs_all5", "mixup_alpha": 0.2},
    "vit_cs_ssl10_mx": {"memory_mode": "off", "stem": "conv", "pretrain": "cs_pool10", "mixup_alpha": 0.2},
    # session 27: at PBC 3% (362 images) mixup 0.2 gained where dropout and the read did not; a stronger mix (alpha 0.4:
    # mixing weights drawn further from 0 and 1), and mixup given three times the steps against the plain ViT given the
    # same (mixup is known to want longer schedules; is PBC 3% step-limited once the images are mixed?)
    "vit_cs_ssl_all5_mx4": {"memory_mode": "off", "stem": "conv", "pretrain": "cs_all5", "mixup_alpha": 0.4},
    "vit_cs_ssl_all5_mx_steps3x": {"memory_mode": "off", "stem": "conv", "pretrain": "cs_all5", "mixup_alpha": 0.2, "step_scale": 3},
    "vit_cs_ssl_all5_steps3x": {"memory_mode": "off", "stem": "conv", "pretrain": "cs_all5", "step_scale": 3},
    # session 28: self-training. The plain ViT fine-tuned from the same trunk on the 3% labelled images plus the unlabelled
    # rest of the training split wherever the teacher (the mixup ViT of the same regime and seed, scored over the 8 flips
    # and turns: the study's best PBC 3% network) gives a class probability >= 0.9, under the teacher's label
    # (medmem.data.pseudo_labels; the true labels of those images are never read for training). Same steps and recipe.
    "vit_cs_ssl_all5_mx_st": {"memory_mode": "off", "stem": "conv", "pretrain": "cs_all5", "mixup_alpha": 0.2,
                              "teacher": "vit_cs_ssl_all5_mx", "pseudo_threshold": 0.9},
    "vit_cs_ssl_all5_st": {"memory_mode": "off", "stem": "conv", "pretrain": "cs_all5", "teacher": "vit_cs_ssl_all5_mx", "pseudo_threshold": 0.9},
    # ... a student given three times the steps (the 1x students' validation ACC still rose at their last epoch), against
    # the teacher's recipe given the same (vit_cs_ssl_all5_mx_steps3x, session 27)
    "vit_cs_ssl_all5_mx_st_steps3x": {"memory_mode": "off", "stem": "conv", "pretrain": "cs_all5", "mixup_alpha": 0.2,
                                      "teacher": "vit_cs_ssl_all5_mx", "pseudo_threshold": 0.9, "step_scale": 3},
    # session 30: a second round. The 3x student (over the 8 views the best PBC 3% network of session 29, 0.922 on seeds
    # 0-1) labels the unlabelled rest in its turn, and a new student with its recipe trains on that manifest
    "vit_cs_ssl_all5_mx_st2_steps3x": {"memory_mode": "off", "stem": "conv", "pretrain": "cs_all5", "mixup_alpha": 0.2,
                                       "teacher": "vit_cs_ssl_all5_mx_st_steps3x", "pseudo_threshold": 0.9, "step_scale": 3},
    # session 31: the first round's teacher and recipe (vit_cs_ssl_all5_mx_st_steps3x), the unlabelled images chosen by a
    # quota per class instead of one threshold (medmem.data.pseudo_labels.class_quota_selection): each class gets
    # 0.5 x its labelled share x 11,589 places, filled by the images the teacher assigns to it most confidently, however
    # confident. One threshold fed the student the classes the teacher finds easy (session 30)
    "vit_cs_ssl_all5_mx_stq5_steps3x": {"memory_mode": "off", "stem": "conv", "pretrain": "cs_all5", "mixup_alpha": 0.2,
                                        "teacher": "vit_cs_ssl_all5_mx", "pseudo_threshold": 0.0, "class_quota": 0.5, "step_scale": 3},
    # session 32: the first round's teacher and recipe at threshold 0.85. Label smoothing 0.1 over 8 classes trains the
    # top probability towards 0.9125, and 0.9 took 31-41% of the unlabelled images at 98.4-98.8% right; 0.85 takes
    # 68-69% at 98.0-98.1% (pseudo_label_quality_pbc_blood_cells_96_r3.md, from the teacher's kept scores)
    "vit_cs_ssl_all5_mx_st85_steps3x": {"memory_mode": "off", "stem": "conv", "pretrain": "cs_all5", "mixup_alpha": 0.2,
                                        "teacher": "vit_cs_ssl_all5_mx", "pseudo_threshold": 0.85, "step_scale": 3},
    # ... and consistency training (bundle unlabelled_ratio, medmem.engine.consistency; FixMatch-style): at every step the
    # network labels as many unlabelled images (the 11,589 outside the regime) as the batch holds, from a weak view, and
    # learns that label on a strong view (colour jitter, cutout) where its probability is >= 0.95. Same trunk, recipe and
    # steps as vit_cs_ssl_all5 (no mixup, which it refuses)
    "vit_cs_ssl_all5_cons": {"memory_mode": "off", "stem": "conv", "pretrain": "cs_all5", "unlabelled_ratio": 1.0, "consistency_threshold": 0.95},
    # ... at threshold 0.85: with label smoothing 0.1 over 8 classes the top probability trains towards 0.9125, and at
    # 0.95 only 3.3% of the unlabelled images counted over the first pass (run log)
    "vit_cs_ssl_all5_cons85": {"memory_mode": "off", "stem": "conv", "pretrain": "cs_all5", "unlabelled_ratio": 1.0, "consistency_threshold": 0.85},
    # session 32: the same given three times the steps (the unlabelled images seen about 9 times; FixMatch trains far
    # longer than the supervised recipe), against the mixup ViT given the same (vit_cs_ssl_all5_mx_steps3x)
    "vit_cs_ssl_all5_cons85_steps3x": {"memory_mode": "off", "stem": "conv", "pretrain": "cs_all5", "unlabelled_ratio": 1.0,
                                       "consistency_threshold": 0.85, "step_scale": 3},
    # session 32: the memory ViT with consistency training (bundle 0.18.0: the unlabelled views read the memory and are
    # never written to it), against movit_cs_ssl_all5 and vit_cs_ssl_all5_cons85: does the lever that lifted the plain
    # ViT lift the memory ViT as much, and does the memory then lead?
    "movit_cs_ssl_all5_cons85": {**MOVIT, "stem": "conv", "pretrain": "cs_all5", "unlabelled_ratio": 1.0, "consistency_threshold": 0.85},
    # ... and an average of the weights (bundle weight_average_decay; 0.99 per step, a horizon of about 100 of the 3%
    # cells' 500 steps) validated and kept in place of the trained weights, for the memory ViT (which cannot take mixup:
    # its memory stores unmixed images) and its plain ViT, same trunk, recipe and steps
    "vit_cs_ssl_all5_ema": {"memory_mode": "off", "stem": "conv", "pretrain": "cs_all5", "weight_average_decay": 0.99},
    "movit_cs_ssl_all5_ema": {**MOVIT, "stem": "conv", "pretrain": "cs_all5", "weight_average_decay": 0.99},
    # ... and the memory ViT as the student: its memory is written with the pseudo-labelled images too
    "movit_cs_ssl_all5_st": {**MOVIT, "stem": "conv", "pretrain": "cs_all5", "teacher": "vit_cs_ssl_all5_mx", "pseudo_threshold": 0.9},
    # session 33: the memory ViT as the student of the 0.85 pseudo-labels (its memory then holds about 8,250 images, 69%
    # of the training split, 98% of their labels right), against the plain ViT on the same manifest without mixup (which
    # the memory refuses): does a memory of the confidently labelled unlabelled images lead where one of 362 did not?
    "movit_cs_ssl_all5_st85": {**MOVIT, "stem": "conv", "pretrain": "cs_all5", "teacher": "vit_cs_ssl_all5_mx", "pseudo_threshold": 0.85},
    "vit_cs_ssl_all5_st85": {"memory_mode": "off", "stem": "conv", "pretrain": "cs_all5", "teacher": "vit_cs_ssl_all5_mx", "pseudo_threshold": 0.85},
    # ... and the plain ViT fine-tuned from the cs_pool10 trunk pre-trained with seed 1: the pre-training seed's share
    # of the fine-tuned network's spread (its _trunkvotep rows vote in the same seed-1 trunk)
    "vit_cs_ssl10s1": {"memory_mode": "off", "stem": "conv", "pretrain": "cs_pool10_s1"},
    "movit_cs_ssl10_vote": {**MOVIT, "stem": "conv", "pretrain": "cs_pool10", "combiner": "vote"},
    # session 19: the class token reads the memory entries of the k training images nearest in a frozen copy of the
    # self-supervised trunk (medmem.memory.trunk_index), where a k-NN beat every fine-tuned network at brain MRI 1%, while
    # the network fine-tunes; their trunk cosine biases the read (pixel_bias); k = 10 as the feature k-NN references
    "movit_cs_ssl_tr": TRUNK_READ,
    "movit_cs_ssl_t01_tr": {**TRUNK_READ, "trunk_lr_scale": 0.1},
    "movit_cs_ssl10_tr": {**TRUNK_READ, "pretrain": "cs_pool10"},
    # ... the read's values carry a learned embedding of each neighbour's class (memory_labels): in the frozen space a
    # training image's neighbours are as telling as a new image's, so the head can learn how far to trust them; with the
    # vote (as above) and without it (the read into the class token is then the labels' only way to the output)
    "movit_cs_ssl_t01_trl": {**TRUNK_READ, "trunk_lr_scale": 0.1, "memory_labels": True},
    "movit_cs_ssl_t01_trl_nv": {**TRUNK_READ, "trunk_lr_scale": 0.1, "memory_labels": True, "memory_vote": 0.0},
    # ... the read only weighs the neighbours' labels (combiner vote) and that vote is trained by its own loss, the head by
    # its own (as movit_cs_px_vs): the attention learns how to rank the trunk's neighbours
    "movit_cs_ssl_t01_tr_vs": {**TRUNK_READ, "trunk_lr_scale": 0.1, "combiner": "vote", "memory_vote_training": "separate"},
    # session 34: session 24's decomposition, from scratch, in the cells where the memory ViT leads on every seed
    # (PneumoniaMNIST 1%, brain MRI 1%, geometry-only): the read alone (no label vote), the read of entries unrelated to
    # the image (memory_retrieval "random"), and the plain ViT with more of its own regulariser (dropout 0.2). Is the
    # lead a read of similar training cases, or any mixing of other images into the class token? (movit_cs_vote, the
    # vote alone, is above.)
    "movit_cs_nv": {**MOVIT, "stem": "conv", "memory_vote": 0.0},
    "movit_cs_nv_rand": {**MOVIT, "stem": "conv", "memory_vote": 0.0, "memory_retrieval": "random"},
    "vit_cs_d2": {"memory_mode": "off", "stem": "conv", "dropout_rate": 0.2},
    # ... at PneumoniaMNIST 1% the lead is in the weights and needs the read and the vote trained together (the read alone
    # +0.4, the vote alone +1.2, both +4.0 with the memory off at test): is it the label signal the vote sends into the
    # retrieval keys? The read alone with the keys trained by the memory contrastive loss instead (memory_contrast)
    "movit_cs_nv_con": {**MOVIT, "stem": "conv", "memory_vote": 0.0, "memory_contrast": 0.5},
}


def require_data_root() -> None:
    """Exit with the reason unless the datasets folder is found (every study script reads it)."""
    from medmem.paths import resolve_data_root

    try:
        resolve_data_root()
    except FileNotFoundError as exc:
        sys.exit(str(exc))


def bundle(configs: list[str], overrides: dict, log: Path) -> None:
    files = [str(CONFIGS / c) for c in configs]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(files), "--bundle_root", str(BUNDLE)]
    for key, value in overrides.items():
        cmd += [f"--{key}", json.dumps(value) if isinstance(value, (bool, list)) else str(value)]
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)


def plain_counterpart(network: str) -> str:
    """The plain network a memory network is compared with: ``movit_cs_ia`` -> ``vit_cs_ia``; a memory design's own suffix
    is dropped where no plain network carries it (``movit_cs_px`` -> ``vit_cs``, ``movit_cs_ia_nh`` -> ``vit_cs_ia``)."""
    plain = network.replace("movit", "vit", 1)
    while plain not in NETWORKS and "_" in plain:
        plain = plain.rsplit("_", 1)[0]
    return plain


def train_images(manifest: dict, regime: int) -> int:
    return len(manifest["regimes"][str(regime)]) if str(regime) in manifest["regimes"] else len(manifest["training"])


def planned_epochs(manifest: dict, network: str, regime: int, images: int | None = None) -> int:
    """Epochs that give ``network`` the regime's step budget (``STEPS``, times its ``step_scale``) over the regime's training
    images, or over ``images`` (a self-training student's labelled plus pseudo-labelled ones)."""
    batches = math.ceil((images or train_images(manifest, regime)) / BATCH)
    return math.ceil(STEPS[regime] * NETWORKS[network].get("step_scale", 1) / batches)


def pseudo_manifest_path(dataset: str, network: str, regime: int, seed: int, runs: Path) -> Path:
    """Where the self-training manifest of student ``network`` goes (shared by students of one teacher and threshold)."""
    settings = NETWORKS[network]
    quota = f"_q{settings['class_quota']:g}" if settings.get("class_quota") else ""
    return runs / dataset / f"pseudo_{settings['teacher']}_tta_p{settings['pseudo_threshold']:g}{quota}_r{regime}_s{seed}.json"


def pseudo_manifest(dataset: str, network: str, regime: int, seed: int, runs: Path, manifest: dict) -> Path:
    """The self-training manifest of student ``network`` (made on first use, as the bundle's pseudo_label.json makes it):
    the regime's labelled images plus the unlabelled rest of the training split that its teacher, scored over the 8 flips
    and turns, labels with probability >= its ``pseudo_threshold`` (and, with a ``class_quota``, the most confident per
    class). The teacher's scores are kept per teacher and seed, so students that select otherwise do not rescore. How
    many of those labels are right: ``pseudo_label_quality.py``."""
    import medmem
    from medmem.engine.pseudo_label import write_pseudo_labelled_manifest

    path = pseudo_manifest_path(dataset, network, regime, seed, runs)
    if path.exists():
        return path
    settings, cfg = NETWORKS[network], DATASETS[dataset]
    teacher = settings["teacher"]
    net = load_trained(dataset, teacher, regime, seed, runs, manifest)  # refuses an unfinished teacher
    summary = write_pseudo_labelled_manifest(
        net, runs / dataset / f"{teacher}_r{regime}_s{seed}" / "models" / "model_full.pt",
        medmem.engine.resolve_manifest(dataset), regime, medmem.data.eval_transforms(cfg["image_size"], cfg["in_channels"]),
        path, threshold=settings["pseudo_threshold"], dihedral=True, batch_size=256, class_quota=settings.get("class_quota"),
        scores=runs / dataset / f"scores_{teacher}_tta_r{regime}_s{seed}.npz",
    )  # fmt: skip
    print(f"    pseudo-labels: {json.dumps(summary)}", flush=True)
    return path


def trained_images(dataset: str, network: str, regime: int, seed: int, runs: Path, manifest: dict) -> int:
    """The images ``network`` trains on at this cell: the regime's, or a student's labelled plus pseudo-labelled ones."""
    if "teacher" not in NETWORKS[network]:
        return train_images(manifest, regime)
    import medmem

    return len(medmem.data.load_manifest(pseudo_manifest(dataset, network, regime, seed, runs, manifest))["training"])


def finished(run_dir: Path, epochs: int) -> bool:
    """Whether a bundle run trained all its epochs: a run stopped part-way already has a model_full.pt (its best so far)."""
    return (run_dir / "models" / f"checkpoint_epoch={epochs}.pt").exists()


def cell_finished(dataset: str, network: str, regime: int, seed: int, runs: Path, manifest: dict) -> bool:
    """Whether study run ``<network>_r<regime>_s<seed>`` trained all its planned epochs (a student's count its larger
    training set: ``trained_images``). A student whose self-training manifest is missing has not trained; the check
    does not make the manifest (that scores the teacher)."""
    if "teacher" in NETWORKS[network] and not pseudo_manifest_path(dataset, network, regime, seed, runs).exists():
        return False
    images = trained_images(dataset, network, regime, seed, runs, manifest)
    return finished(runs / dataset / f"{network}_r{regime}_s{seed}", planned_epochs(manifest, network, regime, images))


def pretrained_trunk(dataset: str, recipe: str, runs: Path) -> Path:
    """The dataset's trunk pre-trained by ``PRETRAIN[recipe]`` (made, or resumed, on first use)."""
    settings = PRETRAIN[recipe]
    out = runs / dataset / f"pretrain_{recipe}_e{settings['pretrain_epochs']}_s{settings.get('seed', 0)}"
    trunk = out / "pretrained_trunk.pt"
    if not trunk.exists():
        out.mkdir(parents=True, exist_ok=True)
        overrides = {"dataset": dataset, "seed": 0, **DATASETS[dataset], **settings, "pretrain_dir": str(out), "resume": True}
        bundle(["train.json", "pretrain.json"], overrides, out.with_suffix(".log"))
    return trunk


def run_network_cell(dataset: str, model: str, regime: int, seed: int, runs: Path, manifest: dict) -> dict:
    network = model.removesuffix("_proto")
    n = trained_images(dataset, network, regime, seed, runs, manifest)
    settings = dict(NETWORKS[network])
    for key in ("step_scale", "teacher", "pseudo_threshold", "class_quota"):  # driver settings, not bundle ones
        settings.pop(key, None)
    data, data_regime = dataset, regime
    if "teacher" in NETWORKS[network]:  # a student trains on every image of its self-training manifest
        data, data_regime = str(pseudo_manifest(dataset, network, regime, seed, runs, manifest)), 100
    if "pretrain" in settings:
        settings["pretrained_trunk"] = str(pretrained_trunk(dataset, settings.pop("pretrain"), runs))
    epochs = planned_epochs(manifest, network, regime, n)
    mode = settings["memory_mode"]
    out = runs / dataset / f"{network}_r{regime}_s{seed}"
    overrides = {
        "dataset": data, "regime": data_regime, "seed": seed, "epochs": epochs, "val_interval": max(1, epochs // 10),
        # networks that name no stem are the study's patch-stem rows, and those that name no intensity_augment were
        # trained with geometry-only augmentation, whatever the bundle's defaults
        "batch_size": BATCH, "output_dir": str(out), **DATASETS[dataset], "stem": "patch", "intensity_augment": False, **settings,
    }  # fmt: skip
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    if not finished(out, epochs):  # a new run, or one stopped part-way: resumed from its last epoch
        bundle(["train.json"], {**overrides, "resume": True}, log)
    eval_mode = mode
    if model.endswith("_proto"):
        bundle(["train.json", "summarize.json"], overrides, log)
        eval_mode = "prototypes"
    bundle(["train.json", "evaluate.json"], {**overrides, "eval_memory_mode": eval_mode}, log)
    report = json.loads((out / f"eval_test_{eval_mode}" / "test_metrics.json").read_text())
    wall = time.time() - start  # this cell's own time (a *_proto cell reuses an already trained network)
    # train_images counts labelled images: a student's pseudo-labelled ones are in its manifest's .summary.json and its epochs
    return {"train_images": train_images(manifest, regime), "epochs": epochs, "acc": report["acc"], "auc": report["auc"], "f1": report["f1"], "wall_s": round(wall, 1)}


# bundle settings that are MemoryViT arguments of the same name (the training config's network_def), so that a network
# rebuilt here for post-hoc cells is the one the bundle trained (a hand list missed pixel_bias when it came)
NET_KEYS = tuple(k for k, v in json.loads((BUNDLE / "configs" / "train.json").read_text())["network_def"].items() if v == f"@{k}")


def build(dataset: str, network: str, num_classes: int):
    """The driver network ``network`` as the bundle builds it for ``dataset`` (untrained; load its state dict)."""
    import medmem

    cfg = DATASETS[dataset]
    kw = {"dropout_rate": 0.1, **{k: v for k, v in NETWORKS[network].items() if k in NET_KEYS}}  # a network may name its own
    return medmem.networks.MemoryViT(cfg["in_channels"], cfg["image_size"], cfg["patch_size"], num_classes, **kw)


def unit_features(net, x):
    """L2-normalised class-token features (N, hidden) as numpy, in batches of 256, no gradient."""
    import torch

    with torch.no_grad():
        f = torch.cat([net.forward_features(x[i : i + 256]) for i in range(0, len(x), 256)])
    return torch.nn.functional.normalize(f, dim=-1).numpy()


def probabilities(net, x):
    """Softmax outputs (N, C) of ``net`` in eval mode for images (N, C, H, W), in batches of 256, no gradient."""
    import torch

    net.eval()
    with torch.no_grad():
        return torch.cat([net(x[i : i + 256]).softmax(-1) for i in range(0, len(x), 256)])


def load_arrays(dataset: str, split: str, regime: int | None, size: int, channels: int):
    import numpy as np
    import torch

    import medmem

    items = medmem.data.load_datalist(medmem.engine.resolve_manifest(dataset), split, None, regime)
    chain = medmem.data.eval_transforms(size, channels)
    x = torch.stack([chain({"image": d["image"]})["image"] for d in items])
    return x, np.asarray([d["label"] for d in items])


def run_logreg_cell(dataset: str, regime: int, seed: int, manifest: dict) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    start = time.time()
    ch = DATASETS[dataset]["in_channels"]
    xtr, ytr = load_arrays(dataset, "training", regime, 28, ch)
    xte, yte = load_arrays(dataset, "test", None, 28, ch)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.1, random_state=seed))
    clf.fit(xtr.flatten(1).numpy(), ytr)
    probs = _full_proba(clf, xte.flatten(1).numpy(), len(manifest["classes"]))
    return post_hoc_row(probs, yte, manifest, len(ytr), start)


def run_pixel_knn_cell(dataset: str, regime: int, manifest: dict) -> dict:
    """No network: the regime's training images as standardised 28-px thumbnails (``PixelCaseVote``, k = 10), each test
    image classified by its nearest ones' labels weighted ``1 / distance ** p``, p chosen on validation from
    ``DISTANCE_POWER_GRID`` (the bundle case vote's grid; the reference for the case vote and the calibrated pixel read)."""
    import torch

    from medmem.memory.pixel_vote import DISTANCE_POWER_GRID, PixelCaseVote
    from medmem.memory.vote import preference, probability_scores

    start = time.time()
    cfg = DATASETS[dataset]
    xtr, ytr = load_arrays(dataset, "training", regime, cfg["image_size"], cfg["in_channels"])
    (xva, yva), (xte, yte) = (load_arrays(dataset, split, None, cfg["image_size"], cfg["in_channels"]) for split in ("validation", "test"))
    memory = PixelCaseVote(len(manifest["classes"]), cfg["in_channels"]).fit(xtr, torch.as_tensor(ytr))
    found = memory.nearest_in_batches(xva)
    power = max(DISTANCE_POWER_GRID, key=lambda p: preference(probability_scores(memory.vote_of(*found, power=p), torch.as_tensor(yva))))
    print(f"    distance power chosen on validation: {power}", flush=True)
    return post_hoc_row(memory.vote(xte, power=power).numpy(), yte, manifest, len(ytr), start)


def post_hoc_row(probs, labels, manifest: dict, train_count: int, start: float) -> dict:
    """The results row of a cell scored on the test split without training: probabilities (N, C), labels (N,)."""
    from medmem.engine.metrics import classification_metrics

    m = classification_metrics(probs, labels, len(manifest["classes"]))
    return {"train_images": train_count, "epochs": 0, "acc": m["acc"], "auc": m["auc"], "f1": m["f1"], "wall_s": round(time.time() - start, 1)}


def _full_proba(clf, x, num_classes: int):
    import numpy as np

    p = clf.predict_proba(x)
    full = np.zeros((len(x), num_classes))
    full[:, clf.classes_] = p
    return full


def load_trained(dataset: str, network: str, regime: int, seed: int, runs: Path, manifest: dict):
    """The finished study run ``<network>_r<regime>_s<seed>`` (its best model, eval mode); refuses an unfinished run."""
    import torch

    run_dir = runs / dataset / f"{network}_r{regime}_s{seed}"
    if not cell_finished(dataset, network, regime, seed, runs, manifest):
        raise FileNotFoundError(f"{run_dir}: train the {network} cell first (no final-epoch checkpoint)")
    net = build(dataset, network, len(manifest["classes"]))
    net.load_state_dict(torch.load(run_dir / "models" / "model_full.pt", map_location="cpu", weights_only=True))
    return net.eval()


def feature_knn_probabilities(net, xtr, ytr, xte, num_classes: int):
    """Class probabilities (N_test, num_classes) of the study's feature k-NN: cosine over ``net``'s class-token features,
    k = 10 (or every training image), distance-weighted."""
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=min(10, len(ytr)), weights="distance", metric="cosine").fit(unit_features(net, xtr), ytr)
    return _full_proba(knn, unit_features(net, xte), num_classes)


def knn_plain_network(model: str) -> str | None:
    """``vit_knn`` / ``vit_cs_knn_vote`` -> the plain network whose features the k-NN reads (``vit`` / ``vit_cs``)."""
    for suffix in ("_knn_vote", "_knn"):
        if model.endswith(suffix) and model.removesuffix(suffix) in NETWORKS:
            return model.removesuffix(suffix)
    return None


def run_vit_knn_cell(dataset: str, regime: int, seed: int, runs: Path, manifest: dict, fuse: float = 0.0, plain: str = "vit") -> dict:
    """k-NN (cosine, k=10, distance-weighted) on the trained plain ViT's class-token features; with
    ``fuse`` w > 0 (model ``vit_knn_vote``), ``(1 - w) * ViT softmax + w * k-NN vote``: a plain ViT plus a
    nearest-neighbour vote bolted on after training, the skeptic's version of the memory vote.
    ``plain`` names the trained memory-less network (``vit``: patch stem, ``vit_cs``: conv stem)."""
    start = time.time()
    cfg = DATASETS[dataset]
    net = load_trained(dataset, plain, regime, seed, runs, manifest)
    xtr, ytr = load_arrays(dataset, "training", regime, cfg["image_size"], cfg["in_channels"])
    xte, yte = load_arrays(dataset, "test", None, cfg["image_size"], cfg["in_channels"])  # read once, for the k-NN and the head
    probs = feature_knn_probabilities(net, xtr, ytr, xte, len(manifest["classes"]))
    if fuse > 0:
        probs = (1 - fuse) * probabilities(net, xte).numpy() + fuse * probs
    return post_hoc_row(probs, yte, manifest, len(ytr), start)


def pretrained_knn_recipe(model: str) -> str | None:
    """``ssl_cs_knn`` -> ``cs``: the k-NN reads a pre-trained trunk (``PRETRAIN``) with no fine-tuning."""
    recipe = model.removeprefix("ssl_").removesuffix("_knn")
    return recipe if model.startswith("ssl_") and model.endswith("_knn") and recipe in PRETRAIN else None


def frozen_trunk(dataset: str, recipe: str, runs: Path, num_classes: int):
    """The dataset's trunk pre-trained by ``PRETRAIN[recipe]`` as a memory-less MemoryViT in eval mode (made first if
    missing)."""
    import medmem

    trunk = pretrained_trunk(dataset, recipe, runs)
    cfg = DATASETS[dataset]
    net = medmem.networks.MemoryViT(cfg["in_channels"], cfg["image_size"], cfg["patch_size"], num_classes, dropout_rate=0.1,
                                    stem=PRETRAIN[recipe]["stem"], memory_mode="off")  # fmt: skip
    return medmem.networks.load_pretrained_trunk(net, trunk).eval()


def run_pretrained_knn_cell(dataset: str, regime: int, runs: Path, manifest: dict, recipe: str) -> dict:
    """k-NN (as ``vit_knn``) on the class-token features of the trunk pre-trained without labels, before any
    fine-tuning: how much of the classes the self-supervised features already separate."""
    pretrained_trunk(dataset, recipe, runs)  # made first if missing; its time is not this row's
    start = time.time()
    cfg = DATASETS[dataset]
    net = frozen_trunk(dataset, recipe, runs, len(manifest["classes"]))
    xtr, ytr = load_arrays(dataset, "training", regime, cfg["image_size"], cfg["in_channels"])
    xte, yte = load_arrays(dataset, "test", None, cfg["image_size"], cfg["in_channels"])
    return post_hoc_row(feature_knn_probabilities(net, xtr, ytr, xte, len(manifest["classes"])), yte, manifest, len(ytr), start)


class TrunkVoteCell(NamedTuple):
    """What a ``*_trunkvote*`` model name asks for: the trained network, the trunk recipe whose frozen features the vote
    compares cases in, and whether the distance power is chosen on validation too (``_trunkvotep``)."""

    network: str
    recipe: str
    power_grid: bool


def trunk_vote_cell(model: str) -> TrunkVoteCell | None:
    """``vit_cs_ssl_t01_trunkvote`` / ``_trunkvotep`` -> ``vit_cs_ssl_t01`` fused with a k-NN vote in the frozen features
    of the trunk it was fine-tuned from (``cs``). ``movit_cs_trunkvotep_cs`` -> any trained network (here one trained from
    scratch, session 21) fused with the vote in the dataset's trunk pre-trained by ``PRETRAIN["cs"]``."""
    match = re.fullmatch(r"(?P<network>.+?)_trunkvote(?P<p>p?)(?:_(?P<recipe>.+))?", model)
    if not match or match["network"] not in NETWORKS:
        return None
    recipe = match["recipe"] or NETWORKS[match["network"]].get("pretrain")
    return TrunkVoteCell(match["network"], recipe, bool(match["p"])) if recipe in PRETRAIN else None


def run_trunk_vote_cell(dataset: str, regime: int, seed: int, runs: Path, manifest: dict, cell: TrunkVoteCell) -> dict:
    """The trained ``cell.network`` fused with the bundle's trunk-space case vote (``medmem.memory.trunk_vote.TrunkCaseVote``,
    ``case_vote.json --case_vote_space trunk``: k = 10, cosine, distance-weighted) on the frozen features of the trunk
    ``PRETRAIN[cell.recipe]``, ``(1 - w) * softmax + w * vote`` with w (and, with ``cell.power_grid``, the distance power)
    chosen on the validation split; the test split is scored once. No training and no memory inside the network: the reference that
    tells what a memory read in the trunk's space (``movit_cs_ssl*_tr``) adds beyond a nearest-neighbour vote there.
    ``_trunkvote`` rows: power 1 (scikit-learn's distance weights, session 19); ``_trunkvotep``: the bundle's power grid."""
    import torch

    from medmem.memory.case_vote import DISTANCE_POWER_GRID
    from medmem.memory.trunk_vote import TrunkCaseVote

    start = time.time()
    cfg = DATASETS[dataset]
    net = load_trained(dataset, cell.network, regime, seed, runs, manifest)
    trunk = pretrained_trunk(dataset, cell.recipe, runs)
    xtr, ytr = load_arrays(dataset, "training", regime, cfg["image_size"], cfg["in_channels"])
    (xva, yva), (xte, yte) = (load_arrays(dataset, split, None, cfg["image_size"], cfg["in_channels"]) for split in ("validation", "test"))
    vote = TrunkCaseVote.from_trunk_file(trunk, len(manifest["classes"]), k=10).fit(xtr, torch.as_tensor(ytr))
    vote.calibrate(probabilities(net, xva), xva, torch.as_tensor(yva), powers=DISTANCE_POWER_GRID if cell.power_grid else (1.0,))
    print(f"    trunk vote weight chosen on validation: {float(vote.weight):.1f}, distance power {float(vote.power)}", flush=True)
    return post_hoc_row(vote(probabilities(net, xte), xte).numpy(), yte, manifest, len(ytr), start)


def pixel_vote_network(model: str) -> str | None:
    """``movit_cs_pix`` / ``movit_cs_pixp`` -> the trained network whose output the pixel-space case vote is fused with
    (``movit_cs``)."""
    for suffix in ("_pix", "_pixp"):
        if model.endswith(suffix) and model.removesuffix(suffix) in NETWORKS:
            return model.removesuffix(suffix)
    return None


def run_pixel_vote_cell(dataset: str, regime: int, seed: int, runs: Path, manifest: dict, network: str, powers=(1.0,)) -> dict:
    """The trained ``network`` with a memory of its regime's training images in pixel space
    (``medmem.memory.pixel_vote.PixelCaseVote``: 28-px thumbnails, k = 10) whose nearest cases' labels are fused with
    its output, the weight (and, from ``powers``, the distance power) chosen on the validation split; the test split is
    scored once. No training. ``_pix`` rows: power 1 (sessions 14-15); ``_pixp`` rows: the bundle's power grid."""
    import torch

    from medmem.memory.pixel_vote import PixelCaseVote

    start = time.time()
    cfg = DATASETS[dataset]
    net = load_trained(dataset, network, regime, seed, runs, manifest)
    xtr, ytr = load_arrays(dataset, "training", regime, cfg["image_size"], cfg["in_channels"])
    (xva, yva), (xte, yte) = (load_arrays(dataset, split, None, cfg["image_size"], cfg["in_channels"]) for split in ("validation", "test"))
    memory = PixelCaseVote(len(manifest["classes"]), cfg["in_channels"]).fit(xtr, torch.as_tensor(ytr))
    memory.calibrate(probabilities(net, xva), xva, torch.as_tensor(yva), powers=powers)
    print(f"    pixel vote weight chosen on validation: {float(memory.weight):.1f}, distance power {float(memory.power)}", flush=True)
    return post_hoc_row(memory(probabilities(net, xte), xte).numpy(), yte, manifest, len(ytr), start)


def tuned_vote_network(model: str) -> str | None:
    """``movit_cs_px_vs_tv`` -> the trained memory network whose vote weight is re-chosen on validation (``movit_cs_px_vs``)."""
    return model.removesuffix("_tv") if model.endswith("_tv") and model.removesuffix("_tv") in NETWORKS else None


def run_tuned_vote_cell(dataset: str, regime: int, seed: int, runs: Path, manifest: dict, network: str) -> dict:
    """The trained memory ``network`` with its memory vote's weight w re-chosen on the validation split
    (``medmem.memory.vote.choose_vote_weight`` over its head and vote, as ``MemoryEditor.tune_vote_weight`` does after
    writing cases); the test split is scored once. No training."""
    import torch

    from medmem.memory.vote import choose_vote_weight, fused, head_and_vote

    start = time.time()
    cfg = DATASETS[dataset]
    net = load_trained(dataset, network, regime, seed, runs, manifest)
    (xva, yva), (xte, yte) = (load_arrays(dataset, split, None, cfg["image_size"], cfg["in_channels"]) for split in ("validation", "test"))
    weight, _ = choose_vote_weight(*head_and_vote(net, xva), torch.as_tensor(yva))
    print(f"    vote weight chosen on validation: {weight:.1f} (trained with {net.memory_vote:.1f})", flush=True)
    return post_hoc_row(fused(*head_and_vote(net, xte), weight).numpy(), yte, manifest, train_images(manifest, regime), start)


def dihedral_network(model: str) -> str | None:
    """``vit_cs_ssl_all5_mx_tta`` -> the trained network whose test images are scored averaged over their 8 flips and
    right-angle turns (``vit_cs_ssl_all5_mx``; session 27)."""
    return model.removesuffix("_tta") if model.endswith("_tta") and model.removesuffix("_tta") in NETWORKS else None


def run_dihedral_cell(dataset: str, regime: int, seed: int, runs: Path, manifest: dict, network: str) -> dict:
    """The trained ``network`` with test-time averaging over the dihedral views (``medmem.engine.dihedral``, the bundle's
    ``eval_dihedral``): the softmax averaged over the 8 flips and turns of each test image. No training."""
    import torch

    from medmem.engine.dihedral import dihedral_probabilities

    start = time.time()
    cfg = DATASETS[dataset]
    net = load_trained(dataset, network, regime, seed, runs, manifest)
    xte, yte = load_arrays(dataset, "test", None, cfg["image_size"], cfg["in_channels"])
    with torch.no_grad():
        probs = torch.cat([dihedral_probabilities(net, xte[i : i + 256]) for i in range(0, len(xte), 256)])
    return post_hoc_row(probs.numpy(), yte, manifest, train_images(manifest, regime), start)


def calibrated_read_network(model: str) -> str | None:
    """``movit_cs_px_vs_cr`` -> the trained pixel-read (or trunk-read, session 19) network whose read is re-weighed on
    validation (``movit_cs_px_vs``)."""
    base = model.removesuffix("_cr")
    return base if model.endswith("_cr") and NETWORKS.get(base, {}).get("memory_retrieval") in ("pixels", "trunk") else None


# the read's query-key temperature scaled by TAU_SCALES (0: the pixel bias alone, i.e. the pixel k-NN weighted
# 1 / distance ** beta), every head alike; beta from the case vote's DISTANCE_POWER_GRID
TAU_SCALES = (0.0, 0.25, 0.5, 1.0, 2.0)


def run_calibrated_read_cell(dataset: str, regime: int, seed: int, runs: Path, manifest: dict, network: str) -> dict:
    """A trained pixel-read (session 16) or trunk-read (session 19) memory ``network`` whose read is re-weighed on the validation split: the
    temperature of its query-key scores scaled (``TAU_SCALES``), the similarity bias (pixels or trunk) set (``DISTANCE_POWER_GRID``; added
    where the network was trained without it) and the vote weight re-chosen, together, by validation accuracy (ties: log
    loss); the test split is scored once. Why: the read was trained on training images, whose features the network has
    fitted, so it may trust feature similarity more than held-out images warrant. No training."""
    import torch

    from medmem.memory.pixel_vote import DISTANCE_POWER_GRID
    from medmem.memory.vote import VOTE_WEIGHT_GRID, choose_vote, fused, head_and_vote

    start = time.time()
    cfg = DATASETS[dataset]
    net = load_trained(dataset, network, regime, seed, runs, manifest)
    (xva, yva), (xte, yte) = (load_arrays(dataset, split, None, cfg["image_size"], cfg["in_channels"]) for split in ("validation", "test"))
    layer = net.memory_layers()[-1]
    trained_log_tau = layer.log_tau.detach().clone()

    def read_with(scale: float, beta: float) -> None:
        with torch.no_grad():
            layer.log_tau.copy_(trained_log_tau + math.log(scale) if scale > 0 else torch.full_like(trained_log_tau, -30.0))
        layer.enable_pixel_bias(beta)

    grid = tuple(w for w in VOTE_WEIGHT_GRID if w > 0) if net.config["combiner"] == "vote" else VOTE_WEIGHT_GRID

    def under(scale: float, beta: float):
        read_with(scale, beta)
        return head_and_vote(net, xva)

    settings = (((scale, beta), lambda s=scale, b=beta: under(s, b)) for scale in TAU_SCALES for beta in DISTANCE_POWER_GRID)
    (scale, beta), weight, scores = choose_vote(settings, torch.as_tensor(yva), grid)
    print(f"    chosen on validation: query-key temperature x{scale}, pixel beta {beta}, vote weight {weight} (acc {scores[weight]['acc']:.4f})", flush=True)
    read_with(scale, beta)
    return post_hoc_row(fused(*head_and_vote(net, xte), weight).numpy(), yte, manifest, train_images(manifest, regime), start)


def read_rows(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path))) if path.exists() else []


# the committed results: the patch-stem study, the conv-stem study (the bundle default since 0.2.0), the ablations
RESULT_FILES = ("regimes.csv", "regimes_conv_stem.csv", "ablations.csv")


def read_all_results() -> list[dict]:
    """Every committed row, for scripts that pair or reference cells across the results files."""
    return [row for name in RESULT_FILES for row in read_rows(REPO / "benchmarks" / "results" / name)]


def append_row(path: Path, row: dict) -> None:
    append_rows(path, [row])


def append_rows(path: Path, new_rows: list[dict]) -> None:
    """Append ``new_rows`` to the results file ``path`` (written to a temporary name and renamed)."""
    from medmem.atomic import atomic_path

    rows = read_rows(path) + new_rows
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    p.add_argument("--models", nargs="+", default=["vit", "movit", "movit_proto", "vit_knn", "logreg"])
    p.add_argument("--regimes", nargs="+", type=int, default=[1, 3, 10, 30, 100])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "regimes.csv"))
    p.add_argument("--runs", default=str(REPO / "runs" / "regimes"), help="where checkpoints and logs go")
    args = p.parse_args()
    require_data_root()
    import medmem

    manifest = medmem.data.load_manifest(medmem.engine.resolve_manifest(args.dataset))
    out, runs = Path(args.out), Path(args.runs)
    for seed in args.seeds:
        for regime in args.regimes:
            for model in args.models:
                done = {(r["dataset"], r["model"], r["regime"], r["seed"]) for r in read_rows(out)}
                if (args.dataset, model, str(regime), str(seed)) in done:
                    continue
                print(f"[{time.strftime('%H:%M:%S')}] {args.dataset} {model} regime {regime}% seed {seed}", flush=True)
                if model == "logreg":
                    result = run_logreg_cell(args.dataset, regime, seed, manifest)
                elif model == "pixel_knn":
                    result = run_pixel_knn_cell(args.dataset, regime, manifest)
                elif pretrained_knn_recipe(model):
                    result = run_pretrained_knn_cell(args.dataset, regime, runs, manifest, pretrained_knn_recipe(model))
                elif knn_plain_network(model):
                    fuse = 0.5 if model.endswith("_vote") else 0.0
                    result = run_vit_knn_cell(args.dataset, regime, seed, runs, manifest, fuse=fuse, plain=knn_plain_network(model))
                elif trunk_vote_cell(model):
                    result = run_trunk_vote_cell(args.dataset, regime, seed, runs, manifest, trunk_vote_cell(model))
                elif dihedral_network(model):
                    result = run_dihedral_cell(args.dataset, regime, seed, runs, manifest, dihedral_network(model))
                elif calibrated_read_network(model):
                    result = run_calibrated_read_cell(args.dataset, regime, seed, runs, manifest, calibrated_read_network(model))
                elif tuned_vote_network(model):
                    result = run_tuned_vote_cell(args.dataset, regime, seed, runs, manifest, tuned_vote_network(model))
                elif pixel_vote_network(model):
                    from medmem.memory.pixel_vote import DISTANCE_POWER_GRID

                    powers = DISTANCE_POWER_GRID if model.endswith("_pixp") else (1.0,)
                    result = run_pixel_vote_cell(args.dataset, regime, seed, runs, manifest, pixel_vote_network(model), powers)
                else:
                    result = run_network_cell(args.dataset, model, regime, seed, runs, manifest)
                row = {"dataset": args.dataset, "model": model, "regime": regime, "seed": seed, **result}
                append_row(out, row)
                print("   ", json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
