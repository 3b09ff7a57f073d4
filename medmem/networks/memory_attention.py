"""Self-attention that also reads an external memory (MoViT-style), as a drop-in MONAI block.

``MemorySABlock`` subclasses MONAI's ``SABlock`` (same ``qkv`` / ``out_proj`` weights) and adds:

- ``full`` mode: each query token retrieves its top-k memory keys (cosine, own sample excluded while
  training) and attends over them;
- ``prototypes`` mode: dense attention over P distilled prototypes per head (no kNN, scriptable);
- ``off`` mode: exactly MONAI's ``SABlock`` (the plain-ViT baseline, same weight layout).

Local and memory attention are combined either by a learned per-head sigmoid gate
(``out = g * mem + (1 - g) * local``) or by one softmax over the concatenated local and memory scores;
or not at all (``vote``): the memory attention weights then only weigh the retrieved entries' labels
(the memory vote) and the class token's features stay the image's own.
Memory scores are cosine similarities times a learned per-head temperature.
"""


import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from monai.networks.blocks import SABlock, TransformerBlock
from torch import nn

from medmem.memory.store import ExternalMemory, forward_rows

MEMORY_MODES = ("off", "full", "prototypes")
COMBINERS = ("gate", "joint", "vote")
MEMORY_QUERIES = ("all", "cls")


class MemorySABlock(SABlock):
    """Multi-head self-attention over the tokens of an image plus an external memory.

    Input and output: (B, T, hidden). Keys/values written to the memory: (B, H, T, Dh).
    """

    pending_keys: Optional[torch.Tensor]
    pending_values: Optional[torch.Tensor]
    train_cls_keys: Optional[torch.Tensor]
    train_sample_ids: Optional[torch.Tensor]
    last_vote: Optional[torch.Tensor]
    compute_vote: bool
    record_evidence: bool

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        tokens: int,
        mode: str = "full",
        k: int = 32,
        momentum: float = 0.9,
        combiner: str = "gate",
        num_prototypes: int = 256,
        queries: str = "all",
        dropout_rate: float = 0.0,
        qkv_bias: bool = False,
        memory_backend: str = "auto",
        memory_dtype: torch.dtype = torch.float32,
        label_aware: bool = False,
        num_classes: int = 0,
        same_token: bool = False,
        retrieve_by_key: bool = False,
        pixel_bias: bool = False,
        random_retrieval: bool = False,
    ) -> None:
        super().__init__(hidden_size, num_heads, dropout_rate, qkv_bias=qkv_bias)
        for name, value, allowed in (("mode", mode, MEMORY_MODES), ("combiner", combiner, COMBINERS), ("queries", queries, MEMORY_QUERIES)):
            if value not in allowed:
                raise ValueError(f"memory {name} must be one of {allowed}, got {value!r}")
        self.mode, self.k, self.combiner, self.queries = mode, k, combiner, queries
        # retrieve from the same token position only (class token -> class tokens of other images)
        self.same_token = same_token
        # find neighbours by key-to-key similarity (images alike), then attend to them by query-key
        # scores; query-key retrieval lets a few "hub" keys attract every query
        self.retrieve_by_key = retrieve_by_key
        # a study control (memory_retrieval "random"): the full memory is searched with a fresh random direction per
        # query instead of the query or key, so the read mixes in entries unrelated to the image; what a read of
        # neighbours adds beyond mixing other images' values into the class token is what differs from it
        self.random_retrieval = random_retrieval
        # neighbours given with their pixel similarity (memory_retrieval "pixels"): add -beta * log(1 - cos) to their
        # attention scores, so that with tau -> 0 and beta = 1 the read weighs them as the distance-weighted pixel k-NN
        # (the case vote) does; beta (per head) is learned, starting there
        self.pixel_bias = False
        if pixel_bias:
            self.enable_pixel_bias(1.0)
        self.memory = ExternalMemory(num_heads, self.dim_head, tokens, momentum, dtype=memory_dtype, backend=memory_backend)
        self.gate_logit = nn.Parameter(torch.zeros(num_heads))
        self.log_tau = nn.Parameter(torch.full((num_heads,), math.log(math.sqrt(self.dim_head))))
        # label-aware reads: a retrieved entry's value also carries a learned embedding of its sample's
        # class (row 0: unknown label), so the layer can use what its neighbours are, not only how they look
        self.label_aware = label_aware
        if label_aware and num_classes < 1:
            raise ValueError("label-aware memory needs num_classes")
        self.label_embedding = nn.Parameter(torch.randn(num_classes + 1, num_heads, self.dim_head) * 0.02 if label_aware else torch.zeros(1, num_heads, self.dim_head))
        self.register_buffer("proto_keys", torch.zeros(num_heads, num_prototypes, self.dim_head))
        self.register_buffer("proto_values", torch.zeros(num_heads, num_prototypes, self.dim_head))
        # training samples behind each prototype (the "similar cases" a prototype stands for), -1 padded
        self.register_buffer("proto_members", torch.full((num_heads, num_prototypes, 8), -1, dtype=torch.long))
        # class distribution of the training entries behind each prototype (for the memory vote)
        self.register_buffer("proto_labels", torch.zeros(num_heads, num_prototypes, max(num_classes, 1)))
        self.num_classes = max(num_classes, 1)
        # the class token's memory vote of the last forward (B, C): its attention weights over the
        # retrieved entries (or prototypes) applied to their labels, averaged over heads
        self.last_vote: Optional[torch.Tensor] = None
        self.compute_vote = False  # set by MemoryViT when its output uses the vote (keeps it off the hot path otherwise)
        self.pending_keys: Optional[torch.Tensor] = None
        self.pending_values: Optional[torch.Tensor] = None
        # the class token's keys (B, H, Dh) of the last training forward, with gradient, and their
        # sample ids: read by the memory contrastive loss (medmem.memory.contrastive)
        self.train_cls_keys: Optional[torch.Tensor] = None
        self.train_sample_ids: Optional[torch.Tensor] = None
        # set by prediction tools: keep what the class token read (see record_read); off in training
        self.record_evidence = False
        self.evidence: dict = {}

    @torch.jit.unused
    def _forward_plain(self, x: torch.Tensor) -> torch.Tensor:
        return SABlock.forward(self, x)

    def forward(self, x: torch.Tensor, sample_ids: Optional[torch.Tensor] = None, neighbours: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """``neighbours``: the class token's memory entries chosen outside the layer, as sample ids (B, k) (-1: none) and
        the similarity they were found by (B, k) (``memory_retrieval="pixels"``); the layer then searches nothing."""
        if self.mode == "off":
            return self._forward_plain(x)
        qkv = self.input_rearrange(self.qkv(x))
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B, H, T, Dh)
        if self.training and self.mode == "full":
            self.pending_keys, self.pending_values = k.detach(), v.detach()
            self.train_cls_keys, self.train_sample_ids = k[:, :, 0], sample_ids
        local_scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * self.scale  # (B, H, T, T)
        # attention-weight dropout as in MONAI's SABlock (the plain ViT's block), on both reads
        local_out = self.drop_weights(torch.softmax(local_scores, dim=-1)) @ v  # (B, H, T, Dh)

        nq = 1 if self.queries == "cls" else q.shape[2]
        qn = F.normalize(q[:, :, :nq], dim=-1)
        tau = self.log_tau.exp().view(1, -1, 1, 1)
        mem_index = torch.zeros(0, dtype=torch.long)
        probe = F.normalize(k[:, :, :nq], dim=-1) if self.retrieve_by_key else qn
        if self.random_retrieval:
            probe = F.normalize(torch.randn_like(probe), dim=-1)
        if self.mode == "full" and neighbours is not None:
            mem_cos, mem_values, mem_valid, mem_index, probe_cos = self._given_entries(qn, neighbours[0], neighbours[1])
        elif self.mode == "full":
            mem_cos, mem_values, mem_valid, mem_index, probe_cos = self._full_memory(qn, sample_ids, probe)  # (B,H,nq,k), (B,H,nq,k,Dh)
        else:
            proto_keys = F.normalize(self.proto_keys, dim=-1)
            mem_cos = torch.einsum("bhqd,hpd->bhqp", qn, proto_keys)
            probe_cos = torch.einsum("bhqd,hpd->bhqp", probe, proto_keys) if self.retrieve_by_key else mem_cos
            mem_values = self.proto_values.unsqueeze(0).unsqueeze(2).expand(q.shape[0], -1, nq, -1, -1)
            # a memory smaller than the prototype budget leaves all-zero prototypes: never read them
            mem_valid = (self.proto_keys.abs().sum(dim=-1) > 0).view(1, self.num_heads, 1, -1).expand_as(mem_cos)
            if self.retrieve_by_key and self.k < mem_cos.shape[-1]:
                # as with the full memory: read only the k prototypes nearest the probe (the key), so the
                # prototypes stand in for the neighbours the full memory would have retrieved
                top = probe_cos.masked_fill(~mem_valid, -2.0).topk(self.k, dim=-1).indices
                mem_valid = mem_valid & torch.zeros_like(mem_valid).scatter(-1, top, True)
        mem_scores = (mem_cos * tau).masked_fill(~mem_valid, -1e4)
        if self.pixel_bias and neighbours is not None:
            mem_scores = mem_scores + self._pixel_score_bias(probe_cos)

        if self.combiner == "gate" or self.combiner == "vote":
            mem_weights = torch.softmax(mem_scores, dim=-1) * mem_valid
            local_part = local_out[:, :, :nq]
            if self.combiner == "vote":
                # neighbours' values are not mixed into the features: the read only feeds the label vote
                mem_part = torch.zeros_like(local_part)
            else:
                mem_out = torch.einsum("bhqk,bhqkd->bhqd", self.drop_weights(mem_weights), mem_values)
                has_memory = mem_valid.any(dim=-1, keepdim=True)  # empty memory: keep the local output
                gate = torch.sigmoid(self.gate_logit).view(1, -1, 1, 1) * has_memory
                mem_part, local_part = gate * mem_out, (1.0 - gate) * local_part
            mixed = mem_part + local_part
        else:
            joint = torch.softmax(torch.cat([local_scores[:, :, :nq], mem_scores], dim=-1), dim=-1)
            t = k.shape[2]
            local_w, mem_w = joint[..., :t], joint[..., t:] * mem_valid
            mem_weights = mem_w
            mem_part = torch.einsum("bhqk,bhqkd->bhqd", self.drop_weights(mem_w), mem_values)
            local_part = self.drop_weights(local_w) @ v
            mixed = local_part + mem_part
        self.last_vote = self._vote(mem_weights[:, :, 0], mem_index) if self.compute_vote else None
        if self.record_evidence:
            self.record_read(local_scores, mem_weights, mem_index, mem_part, local_part, probe_cos.masked_fill(~mem_valid, -1.0))
        out = torch.cat([mixed, local_out[:, :, nq:]], dim=2) if nq < q.shape[2] else mixed
        out = self.out_rearrange(out)
        return self.drop_output(self.out_proj(out))

    def _vote(self, weights: torch.Tensor, mem_index: torch.Tensor) -> torch.Tensor:
        """Class distribution (B, C) read by the class token: attention weights (B, H, k) over entries
        or prototypes applied to their labels (one-hot; unknown labels carry nothing), renormalised,
        averaged over heads. Uniform where the memory holds no labelled entry."""
        if self.mode == "full":
            labels = self._entry_labels(mem_index[:, :, 0])  # (B, H, k, C)
        else:
            labels = self.proto_labels.unsqueeze(0).expand(weights.shape[0], -1, -1, -1)
        vote = torch.einsum("bhk,bhkc->bhc", weights, labels)
        total = vote.sum(dim=-1, keepdim=True)
        uniform = torch.full_like(vote, 1.0 / self.num_classes)
        vote = torch.where(total > 1e-8, vote / total.clamp(min=1e-8), uniform)
        return vote.mean(dim=1)

    @torch.jit.unused
    def _entry_labels(self, index: torch.Tensor) -> torch.Tensor:
        """One-hot labels (..., C) of the entries at ``index`` (zeros where unknown)."""
        labels = self.memory.labels_at(index)
        return F.one_hot(labels.clamp(min=0), self.num_classes).float() * (labels >= 0).unsqueeze(-1)

    @torch.jit.unused
    def _full_memory(self, qn: torch.Tensor, sample_ids: Optional[torch.Tensor], probe: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top-k retrieval by ``probe`` (normalised queries or keys, (B, H, Tq, Dh)): cosine of the
        queries to the found keys (B, H, Tq, k), values (B, H, Tq, k, Dh; empty with the ``vote`` combiner,
        which never mixes them in), validity mask, entry index and the probe's cosine to the found keys (B, H, Tq, k)."""
        found, index = self.memory.search(probe.detach(), self.k, sample_ids, same_token=self.same_token)
        mixes_values = self.combiner != "vote"
        mem_keys, mem_values = self.memory.gather(index, with_values=mixes_values)
        cos = torch.einsum("bhqd,bhqkd->bhqk", qn, mem_keys)  # recomputed so gradients reach the query
        if self.label_aware and mixes_values:
            mem_values = mem_values + self.label_values(self.memory.labels_at(index))
        valid = torch.isfinite(found)
        return cos, mem_values, valid, index, found.masked_fill(~valid, -1.0)

    @torch.jit.unused
    def _given_entries(self, qn: torch.Tensor, neighbour_ids: torch.Tensor, found_by: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The class-token entries of the images ``neighbour_ids`` (B, k) (-1 or not yet written: skipped), in the
        layout of :meth:`_full_memory`; ``found_by`` (B, k) is reported as the probe's cosine."""
        if qn.shape[2] != 1:
            raise ValueError("neighbours chosen outside the layer are read by the class token only: use memory_queries 'cls'")
        rows = self.memory.rows_of(neighbour_ids)  # (B, k), on the memory's device
        b, k = rows.shape
        index = (rows.clamp(min=0) * self.memory.tokens).view(b, 1, 1, k).expand(b, self.num_heads, 1, k)
        mixes_values = self.combiner != "vote"
        mem_keys, mem_values = self.memory.gather(index, with_values=mixes_values)
        cos = torch.einsum("bhqd,bhqkd->bhqk", qn, mem_keys)
        if self.label_aware and mixes_values:
            mem_values = mem_values + self.label_values(self.memory.labels_at(index))
        valid = (rows >= 0).view(b, 1, 1, k).expand(b, self.num_heads, 1, k)
        probe_cos = found_by.to(cos.dtype).view(b, 1, 1, k).expand_as(cos).masked_fill(~valid, -1.0)
        return cos, mem_values, valid, index, probe_cos

    @torch.jit.unused
    def enable_pixel_bias(self, beta: float) -> None:
        """Weigh given pixel neighbours by their pixel similarity too, with every head's beta set to ``beta`` (adds the
        parameter where the layer was built without it, e.g. to re-weigh a trained read on held-out images)."""
        if not self.pixel_bias:
            self.pixel_beta = nn.Parameter(torch.empty(self.num_heads, device=self.qkv.weight.device))
            self.pixel_bias = True
        with torch.no_grad():
            self.pixel_beta.fill_(beta)

    @torch.jit.unused
    def _pixel_score_bias(self, pixel_cos: torch.Tensor) -> torch.Tensor:
        """-beta * log(cosine distance) (B, H, 1, k) for the given neighbours' pixel cosines (B, H, 1, k)."""
        distance = (1.0 - pixel_cos).clamp(min=1e-6)
        return -self.pixel_beta.view(1, -1, 1, 1) * torch.log(distance)

    @torch.jit.unused
    @torch.no_grad()
    def record_read(
        self, local_scores: torch.Tensor, mem_weights: torch.Tensor, mem_index: torch.Tensor, mem_part: torch.Tensor, local_part: torch.Tensor, probe_cos: torch.Tensor
    ) -> None:
        """Keep the class token's read of this forward in ``self.evidence``:

        - ``cls_attention`` (B, H, T-1): its local attention over the patch tokens (attention map);
        - ``weights`` (B, H, k): its attention over the retrieved entries or prototypes;
        - ``sample_ids`` (B, H, k, m): training samples behind each (m = 1 for entries, members for
          prototypes; -1 = none);
        - ``reliance`` (B,): share of the memory in the class token's attention output,
          ||memory part|| / (||memory part|| + ||local part||), averaged over heads;
        - ``familiarity`` (B,): cosine similarity of the class token's retrieval probe (its query, or
          its key with key retrieval) to its nearest memory entry or prototype, averaged over heads
          (low: unlike anything in memory).
        """
        weights = mem_weights[:, :, 0]
        if self.mode == "full":
            owners = self.memory.row_ids[mem_index[:, :, 0] // self.memory.tokens].unsqueeze(-1)
            owners = owners.masked_fill(weights.unsqueeze(-1) <= 0, -1)
        else:
            owners = self.proto_members.unsqueeze(0).expand(weights.shape[0], -1, -1, -1)
        mem_norm, local_norm = mem_part[:, :, 0].norm(dim=-1), local_part[:, :, 0].norm(dim=-1)
        self.evidence = {
            "cls_attention": torch.softmax(local_scores[:, :, 0], dim=-1)[:, :, 1:],
            "weights": weights,
            "sample_ids": owners,
            "reliance": (mem_norm / (mem_norm + local_norm).clamp(min=1e-12)).mean(dim=1),
            "familiarity": probe_cos[:, :, 0].max(dim=-1).values.mean(dim=1),
        }

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if not self.label_aware and prefix + "label_embedding" in missing_keys:
            missing_keys.remove(prefix + "label_embedding")  # checkpoints from before label-aware reads
        if prefix + "proto_labels" in missing_keys:
            missing_keys.remove(prefix + "proto_labels")  # checkpoints from before the memory vote

    @torch.jit.unused
    def label_values(self, labels: torch.Tensor) -> torch.Tensor:
        """Label embeddings (B, H, Tq, k, Dh) for entry labels (B, H, Tq, k) (-1 = unknown)."""
        heads = torch.arange(labels.shape[1], device=labels.device).view(1, -1, 1, 1)
        return self.label_embedding[labels + 1, heads]

    @torch.jit.unused
    def clear_transient(self) -> None:
        """Drop what the last forward left behind (its vote, training keys with their autograd graph,
        pending writes, evidence), e.g. before the module is copied or saved."""
        self.last_vote = self.pending_keys = self.pending_values = self.train_cls_keys = self.train_sample_ids = None
        self.evidence = {}

    @torch.no_grad()
    def commit_memory(self, sample_ids: torch.Tensor, labels: Optional[torch.Tensor] = None) -> None:
        """Write the keys/values of the last training forward for the batch's (B,) sample ids (and labels); rows the
        batch preparation appended with id -1 (consistency training's unlabelled views) are not written
        (``medmem.memory.store.forward_rows``)."""
        if self.pending_keys is None:
            return
        sample_ids, labels = forward_rows(self.train_sample_ids, sample_ids, labels, self.pending_keys.shape[0])
        self.memory.write(self.pending_keys, self.pending_values, sample_ids, labels)
        self.pending_keys = self.pending_values = None


class ViTBlock(TransformerBlock):
    """MONAI ``TransformerBlock`` with the call signature shared by all medmem blocks."""

    def forward(self, x: torch.Tensor, sample_ids: Optional[torch.Tensor] = None, neighbours: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:  # type: ignore[override]
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def memory_vote(self) -> Optional[torch.Tensor]:
        """The class token's memory vote of the last forward (B, C); None without a memory read."""
        return None


class MemoryTransformerBlock(ViTBlock):
    """Pre-norm transformer block whose attention is a :class:`MemorySABlock` (same weight names)."""

    def __init__(self, hidden_size: int, mlp_dim: int, num_heads: int, tokens: int, dropout_rate: float = 0.0, qkv_bias: bool = False, **memory_kwargs) -> None:
        super().__init__(hidden_size, mlp_dim, num_heads, dropout_rate, qkv_bias=qkv_bias)
        self.attn = MemorySABlock(hidden_size, num_heads, tokens, dropout_rate=dropout_rate, qkv_bias=qkv_bias, **memory_kwargs)

    def forward(self, x: torch.Tensor, sample_ids: Optional[torch.Tensor] = None, neighbours: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), sample_ids, neighbours)
        return x + self.mlp(self.norm2(x))

    def memory_vote(self) -> Optional[torch.Tensor]:
        return None if self.attn.mode == "off" else self.attn.last_vote
