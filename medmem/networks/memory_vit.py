"""MemoryViT: a ViT classifier whose chosen block(s) read an external memory of training images.

Layout (names match ``monai.networks.nets.ViT`` so plain-ViT weights load directly)::

    patch_embedding -> [cls_token ; patches] -> blocks (some memorising) -> norm -> classification_head

Input (B, C, *img_size) with 2 or 3 spatial dims; output logits (B, num_classes): no tuple, no Tanh.
"""


import hashlib
import json
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from monai.networks.blocks import PatchEmbeddingBlock
from monai.utils import ensure_tuple_rep
from torch import nn

from medmem.flags import as_flag
from medmem.memory.pixel_index import PixelNeighbourIndex
from medmem.memory.trunk_index import TrunkNeighbourIndex
from medmem.memory.vote import fused
from medmem.networks.conv_stem import ConvStemEmbedding
from medmem.networks.memory_attention import MEMORY_MODES, MemorySABlock, MemoryTransformerBlock, ViTBlock
from medmem.networks.neighbour_readout import READOUTS, NeighbourReadout
from medmem.networks.pretraining import is_trunk_key

# Settings that shape the memory: a memory saved under one of these cannot serve another.
VOTE_TRAINING = ("fused", "separate")
RETRIEVALS = ("query", "key", "pixels", "trunk", "random")
# retrievals whose neighbours an index outside the attention chooses (the class token reads their entries)
INDEXED_RETRIEVALS = ("pixels", "trunk")
STEMS = ("patch", "conv")
FINGERPRINT_KEYS = ("in_channels", "img_size", "patch_size", "spatial_dims", "hidden_size", "num_heads", "num_layers", "memory_blocks", "stem", "readout")


class MemoryViT(nn.Module):
    """Vision transformer with MoViT-style external memory.

    Args:
        in_channels: input channels.
        img_size: spatial size (int or per-axis).
        patch_size: patch size (int or per-axis).
        num_classes: output logits.
        spatial_dims: 2 or 3.
        hidden_size, mlp_dim, num_layers, num_heads, dropout_rate, qkv_bias: ViT settings.
        memory_blocks: indices of memorising blocks (negative counts from the top); default the last.
        memory_mode: ``off`` (plain ViT), ``full`` (kNN over the full memory), ``prototypes``.
        memory_k: neighbours retrieved per query token.
        atma_momentum: ATMA momentum m (0 = overwrite).
        combiner: ``gate``, ``joint`` or ``vote`` (the read feeds only the memory vote; needs
            ``memory_vote`` > 0).
        num_prototypes: prototypes per head for ``prototypes`` mode.
        memory_queries: ``all`` tokens query the memory, or only ``cls``.
        memory_backend: kNN backend ``auto``/``torch``/``faiss``.
        memory_dtype: ``float32`` or ``float16`` storage.
        memory_labels: label-aware memory reads (each retrieved value also carries a learned
            embedding of its training sample's class).
        memory_match: ``any`` (a query may retrieve any token of any stored image) or ``same_token``
            (query token j retrieves token j of other images: the class token then finds k different
            images; with ``any`` its k neighbours were found to be the tokens of a single image).
        memory_retrieval: find neighbours by ``query``-key similarity (attention-style), by
            ``key``-key similarity (images alike), or by ``pixels``: the ``memory_k`` training images nearest in their
            standardised ``pixel_size`` thumbnails (:class:`~medmem.memory.pixel_index.PixelNeighbourIndex`, filled by
            :meth:`fit_pixel_index` before training), whose class-token entries the class token reads (needs
            ``memory_queries="cls"``; no prototype mode), or by ``trunk``: the same, the images nearest in the class-token
            features of a frozen copy of the pre-trained trunk (:class:`~medmem.memory.trunk_index.TrunkNeighbourIndex`,
            loaded by :func:`~medmem.networks.pretraining.load_pretrained_trunk`; features formed before any label was
            fitted, docs/design.md "Session 19"). Attention over them uses query-key scores either way. ``random``: a study
            control, the memory searched with a fresh random direction per query (entries unrelated to the image; in
            training and at test), to tell what reading neighbours adds beyond mixing other images' values in.
        pixel_size: thumbnail side of the ``pixels`` retrieval.
        pixel_bias: with the ``pixels`` (or ``trunk``) retrieval, add ``-beta * log(1 - cosine)`` of the space the
            neighbours were found in (beta learned per head, from 1) to the class token's attention scores over them,
            so the read can weigh them by how alike they are there as well as by query-key similarity (beta = 1 alone:
            the distance-weighted k-NN's weights in that space). The name is kept from when only pixels had it.
        memory_vote: weight w of the memory vote in the output, in [0, 1): the model returns
            ``log((1 - w) * softmax(logits) + w * vote)``, where ``vote`` is the class distribution the
            last memorising layer's class token read from the labels of the entries it attended to
            (0 = plain logits). Training through it teaches the memory attention to find same-class
            images (as in neighbourhood component analysis) even once the rest of the network fits
            its training images, and labelled cases written later change predictions directly.
        stem: how patch tokens are made: ``patch`` (one linear projection per patch, as MONAI's ViT) or
            ``conv`` (strided 3x3 convolutions, :class:`~medmem.networks.conv_stem.ConvStemEmbedding`;
            needs a power-of-two patch size).
        memory_vote_training: how the vote is trained. ``fused``: through the fused output above.
            ``separate``: in training mode the model returns the head's own logits and keeps the vote in
            ``train_vote`` (B, C), which ``medmem.engine.MemoryAwareLoss`` scores with its own
            cross-entropy term; outside training the output is fused as above. Why: through the fused
            output the head's gradient is scaled down wherever the (at first random) vote is right or
            wrong, and it learned slower than a plain ViT's head (10% PBC study, docs/design.md).
        readout: what the classifier reads: ``linear`` (the class-token features) or ``neighbours`` (the features
            plus what the ``readout_k`` nearest training images' features and labels say,
            :class:`~medmem.networks.neighbour_readout.NeighbourReadout`; its feature bank follows ``memory_mode``
            ``off``/``full`` and ``atma_momentum``; combine with ``memory_blocks=[]`` for a network whose only
            memory is the readout's).
        readout_k: neighbours the ``neighbours`` readout reads per image.
        readout_labels: whether the readout's neighbours bring their label embeddings (``False``: an ablation).
    """

    train_vote: Optional[torch.Tensor]
    __jit_unused_properties__ = ["neighbour_index"]  # indexes run outside TorchScript (as _indexed_neighbours)

    def __init__(
        self,
        in_channels: int,
        img_size: Union[int, Sequence[int]],
        patch_size: Union[int, Sequence[int]],
        num_classes: int,
        spatial_dims: int = 2,
        hidden_size: int = 192,
        mlp_dim: int = 768,
        num_layers: int = 6,
        num_heads: int = 3,
        dropout_rate: float = 0.0,
        qkv_bias: bool = True,
        memory_blocks: Sequence[int] = (-1,),
        memory_mode: str = "full",
        memory_k: int = 32,
        atma_momentum: float = 0.9,
        combiner: str = "gate",
        num_prototypes: int = 256,
        memory_queries: str = "cls",
        memory_backend: str = "auto",
        memory_dtype: str = "float32",
        memory_labels: bool = False,
        memory_match: str = "any",
        memory_retrieval: str = "query",
        memory_vote: float = 0.0,
        memory_vote_training: str = "fused",
        stem: str = "patch",
        readout: str = "linear",
        readout_k: int = 32,
        readout_labels: bool = True,
        pixel_size: int = 28,
        pixel_bias: bool = False,
    ) -> None:
        super().__init__()
        if memory_mode not in MEMORY_MODES:
            raise ValueError(f"memory_mode must be one of {MEMORY_MODES}, got {memory_mode!r}")
        # bundle overrides arrive as text ('false' would be true)
        qkv_bias, memory_labels, readout_labels, pixel_bias = (
            as_flag(v, n) for v, n in ((qkv_bias, "qkv_bias"), (memory_labels, "memory_labels"), (readout_labels, "readout_labels"), (pixel_bias, "pixel_bias"))
        )
        img_size = tuple(ensure_tuple_rep(img_size, spatial_dims))
        patch_size = tuple(ensure_tuple_rep(patch_size, spatial_dims))
        for i, p in zip(img_size, patch_size):
            if i % p:
                raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        memory_blocks = sorted({b % num_layers for b in memory_blocks})
        self.config = {
            "in_channels": in_channels, "img_size": list(img_size), "patch_size": list(patch_size),
            "num_classes": num_classes, "spatial_dims": spatial_dims, "hidden_size": hidden_size,
            "mlp_dim": mlp_dim, "num_layers": num_layers, "num_heads": num_heads,
            "dropout_rate": dropout_rate, "qkv_bias": qkv_bias, "memory_blocks": memory_blocks,
            "memory_mode": memory_mode, "memory_k": memory_k, "atma_momentum": atma_momentum,
            "combiner": combiner, "num_prototypes": num_prototypes, "memory_queries": memory_queries,
            "memory_backend": memory_backend, "memory_dtype": memory_dtype, "memory_labels": memory_labels,
            "memory_match": memory_match, "memory_retrieval": memory_retrieval, "memory_vote": memory_vote,
            "memory_vote_training": memory_vote_training, "stem": stem, "readout": readout, "readout_k": readout_k,
            "readout_labels": readout_labels, "pixel_size": pixel_size, "pixel_bias": pixel_bias,
        }  # fmt: skip
        if memory_retrieval not in RETRIEVALS:
            raise ValueError(f"memory_retrieval must be one of {RETRIEVALS}, got {memory_retrieval!r}")
        if memory_retrieval in INDEXED_RETRIEVALS and (memory_queries != "cls" or memory_mode == "prototypes"):
            raise ValueError(f"memory_retrieval {memory_retrieval!r} reads the class token's neighbours only: use memory_queries 'cls' and memory_mode 'full' or 'off'")
        if pixel_bias and memory_retrieval not in INDEXED_RETRIEVALS:
            raise ValueError(f"pixel_bias weighs neighbours found by an index: it needs memory_retrieval one of {INDEXED_RETRIEVALS}")
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        if readout == "neighbours" and memory_mode == "prototypes":
            raise ValueError("the neighbour readout has no prototype mode: build it with memory_mode 'full' or 'off'")
        if combiner == "vote" and memory_mode != "off" and memory_vote <= 0:
            raise ValueError("combiner 'vote' uses the memory only through the vote: set memory_vote > 0")
        if memory_vote_training not in VOTE_TRAINING:
            raise ValueError(f"memory_vote_training must be one of {VOTE_TRAINING}, got {memory_vote_training!r}")
        self.memory_vote_training = memory_vote_training
        # the last training forward's memory vote (B, C), set only with memory_vote_training="separate"
        self.train_vote: Optional[torch.Tensor] = None
        self.tokens = int(np.prod([i // p for i, p in zip(img_size, patch_size)])) + 1
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if stem == "conv":
            self.patch_embedding = ConvStemEmbedding(in_channels, img_size, patch_size, hidden_size, spatial_dims, dropout_rate)
        else:
            self.patch_embedding = PatchEmbeddingBlock(
                in_channels=in_channels, img_size=img_size, patch_size=patch_size, hidden_size=hidden_size,
                num_heads=num_heads, proj_type="conv", pos_embed_type="learnable", dropout_rate=dropout_rate,
                spatial_dims=spatial_dims,
            )  # fmt: skip
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        memory_kwargs = dict(
            mode=memory_mode, k=memory_k, momentum=atma_momentum, combiner=combiner, num_prototypes=num_prototypes,
            queries=memory_queries, memory_backend=memory_backend, memory_dtype=getattr(torch, memory_dtype),
            label_aware=memory_labels, num_classes=num_classes, same_token=memory_match == "same_token",
            retrieve_by_key=memory_retrieval == "key", pixel_bias=pixel_bias, random_retrieval=memory_retrieval == "random",
        )  # fmt: skip
        self.blocks = nn.ModuleList(
            MemoryTransformerBlock(hidden_size, mlp_dim, num_heads, self.tokens, dropout_rate, qkv_bias, **memory_kwargs)
            if i in memory_blocks
            else ViTBlock(hidden_size, mlp_dim, num_heads, dropout_rate, qkv_bias=qkv_bias)
            for i in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.classification_head = nn.Linear(hidden_size, num_classes)
        self.readout: Optional[NeighbourReadout] = (
            NeighbourReadout(hidden_size, num_classes, readout_k, atma_momentum, dropout_rate, memory_mode, readout_labels) if readout == "neighbours" else None
        )
        # the training images by their thumbnails, or by a frozen pre-trained trunk's features: chooses which memory
        # entries the class token reads
        self.pixel_index: Optional[PixelNeighbourIndex] = PixelNeighbourIndex(in_channels, pixel_size, spatial_dims) if memory_retrieval == "pixels" else None
        self.trunk_index: Optional[TrunkNeighbourIndex] = None
        if memory_retrieval == "trunk":
            self.trunk_index = TrunkNeighbourIndex(frozen_trunk_encoder(in_channels, img_size, patch_size, spatial_dims, hidden_size, mlp_dim,
                                                                        num_layers, num_heads, stem, qkv_bias))  # fmt: skip
        self.set_memory_vote(memory_vote)
        self.register_buffer("memory_fingerprint", torch.tensor(list(bytes.fromhex(self.fingerprint())), dtype=torch.uint8))

    # ------------------------------------------------------------------------------------- forward
    def forward_features(self, x: torch.Tensor, sample_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, C, *img_size) -> normalised class-token features (B, hidden)."""
        neighbours = self._indexed_neighbours(x, sample_ids) if self.pixel_index is not None or self.trunk_index is not None else None
        x = self.patch_embedding(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x, sample_ids, neighbours)
        return self.norm(x)[:, 0]

    @property
    def neighbour_index(self) -> Optional[Union[PixelNeighbourIndex, TrunkNeighbourIndex]]:
        """The index that chooses the class token's neighbours (``memory_retrieval`` ``pixels`` or ``trunk``), else None."""
        return self.pixel_index if self.pixel_index is not None else self.trunk_index

    @torch.jit.unused
    def _indexed_neighbours(self, x: torch.Tensor, sample_ids: Optional[torch.Tensor]) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """Sample ids (B, memory_k) of the training images nearest ``x`` in the index's space and their cosines; None
        when no layer reads its memory."""
        index = self.neighbour_index
        if index is None or not any(layer.mode == "full" for layer in self.memory_layers()):
            return None
        return index.neighbours(x, self.config["memory_k"], sample_ids)

    @torch.no_grad()
    def fit_pixel_index(self, images: torch.Tensor, sample_ids: torch.Tensor) -> None:
        """Store the un-augmented training images (N, C, *img_size) by ``sample_id`` in the neighbour index
        (``memory_retrieval`` ``pixels`` or ``trunk``; the name is kept from when pixels were the only index)."""
        index = self.neighbour_index
        if index is None:
            raise ValueError("this MemoryViT retrieves by its own keys or queries: it has no neighbour index (memory_retrieval 'pixels' or 'trunk')")
        index.fit(images, sample_ids)

    def forward(self, x: torch.Tensor, sample_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (B, num_classes) (log-probabilities with a memory vote, except while training with
        ``memory_vote_training="separate"``). ``sample_ids`` (B,) excludes each image's own memory entries."""
        features = self.forward_features(x, sample_ids)
        if self.readout is not None:
            features = self.readout(features, sample_ids)
        logits = self.classification_head(features)
        self.train_vote = None
        if self.memory_vote > 0:
            vote: Optional[torch.Tensor] = None
            for block in self.blocks:
                v = block.memory_vote()
                if v is not None:
                    vote = v  # the last memorising layer votes
            if vote is not None and self.training and self.memory_vote_training == "separate":
                self.train_vote = vote
                return logits
            if vote is not None:
                probs = fused(torch.softmax(logits, dim=-1), vote, self.memory_vote)
                return torch.log(probs.clamp(min=1e-8))
        return logits

    # -------------------------------------------------------------------------------------- memory
    def memory_layers(self) -> List[MemorySABlock]:
        return [b.attn for b in self.blocks if isinstance(b.attn, MemorySABlock)]

    @torch.jit.unused
    def set_memory_vote(self, weight: float) -> None:
        """Output ``log((1 - w) softmax(logits) + w vote)`` from now on (w = 0: plain logits); kept in
        ``config`` so a saved model card carries it. The layers compute the vote only when it is used."""
        if not 0.0 <= weight < 1.0:
            raise ValueError(f"memory_vote must be in [0, 1), got {weight}")
        self.memory_vote = float(weight)
        self.config["memory_vote"] = float(weight)
        for layer in self.memory_layers():
            layer.compute_vote = weight > 0

    @torch.jit.unused
    def clear_transient(self) -> None:
        """Drop every tensor the last forward left on the modules (see ``MemorySABlock.clear_transient``)."""
        self.train_vote = None
        for layer in self.memory_layers():
            layer.clear_transient()
        if self.readout is not None:
            self.readout.pending = self.readout.pending_ids = None

    def set_memory_mode(self, mode: str) -> None:
        if mode not in MEMORY_MODES:
            raise ValueError(f"memory_mode must be one of {MEMORY_MODES}, got {mode!r}")
        if mode == "prototypes" and self.neighbour_index is not None:
            raise ValueError("a memory read by indexed neighbours (pixels, trunk) has no prototype mode: evaluate it with memory mode 'full' or 'off'")
        if self.readout is not None:
            self.readout.set_mode(mode)
        self.config["memory_mode"] = mode
        for layer in self.memory_layers():
            layer.mode = mode

    @torch.no_grad()
    def commit_memory(self, sample_ids: torch.Tensor, labels: Optional[torch.Tensor] = None) -> None:
        """Write the last training forward's keys/values of every memorising layer."""
        for layer in self.memory_layers():
            layer.commit_memory(sample_ids, labels)
        if self.readout is not None:
            self.readout.commit_memory(sample_ids, labels)

    @torch.no_grad()
    def write_memory(self, images: torch.Tensor, sample_ids: torch.Tensor, labels: Optional[torch.Tensor] = None) -> None:
        """Write images into the memory without a gradient step (e.g. to fill or extend it).

        Runs the model in eval mode (no dropout) while still capturing keys/values.
        """
        was_training = self.training
        self.eval()
        for layer in self.memory_layers():
            layer.training = True  # capture keys/values; everything else stays in eval behaviour
        if self.readout is not None:
            self.readout.training = True  # (its dropout module stays in eval behaviour)
        try:
            if self.neighbour_index is not None:
                self.neighbour_index.add(images, sample_ids)  # new cases become findable in the index too
            self.forward(images, sample_ids)
            self.commit_memory(sample_ids, labels)
        finally:
            self.train(was_training)

    def memory_size(self) -> int:
        """Samples held by the (first) memorising layer, else by the neighbour readout's bank."""
        layers = self.memory_layers()
        if layers:
            return layers[0].memory.num_written
        return self.readout.memory.num_written if self.readout is not None else 0

    def fingerprint(self) -> str:
        """sha256 of the settings that shape the memory (not mode, k or combiner)."""
        settings = {k: self.config[k] for k in FINGERPRINT_KEYS}
        # the stem and the readout came later: checkpoints made before them keep their fingerprint
        for key, default in (("stem", "patch"), ("readout", "linear")):
            if settings[key] == default:
                del settings[key]
        blob = json.dumps(settings, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        saved = state_dict.get(prefix + "memory_fingerprint")
        if saved is not None and not torch.equal(saved.cpu(), self.memory_fingerprint.cpu()):
            error_msgs.append(
                "this checkpoint's memory was written by a MemoryViT of another configuration "
                f"(fingerprint {bytes(saved.tolist()).hex()[:12]}... != {self.fingerprint()[:12]}...; "
                f"settings that must match: {', '.join(FINGERPRINT_KEYS)})"
            )
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)


def frozen_trunk_encoder(
    in_channels: int,
    img_size: Union[int, Sequence[int]],
    patch_size: Union[int, Sequence[int]],
    spatial_dims: int = 2,
    hidden_size: int = 192,
    mlp_dim: int = 768,
    num_layers: int = 6,
    num_heads: int = 3,
    stem: str = "patch",
    qkv_bias: bool = True,
) -> MemoryViT:
    """A memory-less MemoryViT that only computes class-token features, for a frozen copy of a pre-trained trunk (the
    trunk index, the trunk-space case vote); the arguments are a trunk file's settings (``pretraining.TRUNK_SETTINGS``).
    Its weights are random until the trunk is loaded."""
    encoder = MemoryViT(in_channels, img_size, patch_size, 2, spatial_dims, hidden_size, mlp_dim, num_layers, num_heads, 0.0, qkv_bias,
                        memory_blocks=[], memory_mode="off", stem=stem)  # fmt: skip
    encoder.classification_head = nn.Identity()  # only its features are read
    return encoder


def param_groups(network: nn.Module, lr: float, weight_decay: float, memory_lr_scale: float = 20.0, trunk_lr_scale: float = 1.0) -> List[dict]:
    """Optimiser groups: the memory read's own scalars (per-head gate logits, temperatures, pixel-bias weights) get a
    larger learning rate and no weight decay; with ``trunk_lr_scale`` != 1 the trunk (stem, attention, MLPs: the
    weights a pre-trained trunk brings, ``pretraining.is_trunk_key``) gets ``lr * trunk_lr_scale``; everything else is as usual.

    Why: these are a handful of scalars that start at a neutral value (gate 0.5); at the backbone's
    learning rate Adam moves each by at most ``lr`` per step, so over a short small-data run the gate
    could not leave 0.5, and weight decay would pull it back there. In ``off`` mode they receive no
    gradient, so a plain-ViT baseline trains exactly as with a single group. A pre-trained trunk fine-tuned at the
    full rate on a few dozen images loses what pre-training gave it (docs/design.md, Session 18); a smaller trunk rate
    keeps it while the head and the memory read learn.
    """
    memory_names = ("gate_logit", "log_tau", "pixel_beta")
    memory, trunk, rest = [], [], []
    for name, p in network.named_parameters():
        if name.rsplit(".", 1)[-1] in memory_names:
            memory.append(p)
        elif not p.requires_grad:  # a frozen trunk index's encoder
            continue
        elif float(trunk_lr_scale) != 1.0 and is_trunk_key(name):
            trunk.append(p)
        else:
            rest.append(p)
    groups = [{"params": rest, "lr": lr, "weight_decay": weight_decay}]
    if trunk:
        groups.append({"params": trunk, "lr": lr * float(trunk_lr_scale), "weight_decay": weight_decay})
    if memory:
        groups.append({"params": memory, "lr": lr * memory_lr_scale, "weight_decay": 0.0})
    return groups
