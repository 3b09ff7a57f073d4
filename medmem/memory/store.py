"""The external memory of one memorising attention layer.

Slots are addressed by ``(sample_id, token)``: each written sample owns one row of ``tokens`` slots per
head. The memory is a set of buffers (never parameters), so it travels in the model's ``state_dict``
and no gradient can reach it. Rows are appended as new samples arrive and capacity doubles when full,
so nothing is ever reset.

Write rule (ATMA, attention temporal moving average): a slot already written is updated
``slot <- m * slot + (1 - m) * new`` and its key re-normalised; a new slot is written as is. ``m = 0``
is plain overwrite.
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist
from torch import nn

from medmem.memory.knn import knn_search, use_faiss


class ExternalMemory(nn.Module):
    """Keys and values of ``num_heads`` heads for ``tokens`` tokens per sample.

    Buffers (S = rows allocated, n = rows written, N = n * tokens entries):
        keys:   (H, S * tokens, Dh), L2-normalised
        values: (H, S * tokens, Dh)
        row_ids: (S,) sample id of each row, -1 where unwritten
    """

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        tokens: int,
        momentum: float = 0.9,
        capacity: int = 64,
        dtype: torch.dtype = torch.float32,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"ATMA momentum must be in [0, 1), got {momentum}")
        self.num_heads, self.head_dim, self.tokens = num_heads, head_dim, tokens
        self.momentum, self.backend = momentum, backend
        self.register_buffer("keys", torch.zeros(num_heads, capacity * tokens, head_dim, dtype=dtype))
        self.register_buffer("values", torch.zeros(num_heads, capacity * tokens, head_dim, dtype=dtype))
        self.register_buffer("row_ids", torch.full((capacity,), -1, dtype=torch.long))
        self.register_buffer("row_labels", torch.full((capacity,), -1, dtype=torch.long))  # -1: label unknown
        self.register_buffer("num_rows", torch.zeros((), dtype=torch.long))
        self.id_to_row: dict[int, int] = {}

    # ----------------------------------------------------------------------------------- bookkeeping
    @property
    def num_written(self) -> int:
        """Samples written so far."""
        return int(self.num_rows)

    @property
    def num_entries(self) -> int:
        """Retrievable entries per head."""
        return self.num_written * self.tokens

    def sample_ids(self) -> torch.Tensor:
        """(n,) ids of the written samples, in row order."""
        return self.row_ids[: self.num_written].clone()

    def token_keys(self, position: int = 0, sample_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Keys (H, R, Dh) of one token position (0: the class token) of every written row in row order, or of
        ``sample_ids`` (R,) in that order. A row holds ``tokens`` consecutive slots, so row r's token j is slot
        ``r * tokens + j``: indexing the slot axis by row numbers reads unrelated tokens."""
        if not 0 <= position < self.tokens:
            raise IndexError(f"token position {position} outside 0..{self.tokens - 1}")
        if sample_ids is None:
            rows = torch.arange(self.num_written, device=self.keys.device)
        else:
            rows = self.rows_of(sample_ids.reshape(-1))
            if bool((rows < 0).any()):
                raise KeyError(f"samples not in the memory: {sample_ids.reshape(-1)[rows < 0].tolist()[:5]}")
        return self.keys[:, rows * self.tokens + position]

    def rows_of(self, sample_ids: torch.Tensor) -> torch.Tensor:
        """Row of each sample id (any shape; -1 where the sample is not written), on the memory's device."""
        flat = [self.id_to_row.get(int(s), -1) for s in sample_ids.reshape(-1).tolist()]
        return torch.tensor(flat, dtype=torch.long, device=self.keys.device).view(sample_ids.shape)

    def _grow(self, rows_needed: int) -> None:
        capacity = self.row_ids.shape[0]
        if rows_needed <= capacity:
            return
        new_capacity = max(rows_needed, 2 * capacity)
        extra = new_capacity - capacity
        pad = torch.zeros(self.num_heads, extra * self.tokens, self.head_dim, dtype=self.keys.dtype, device=self.keys.device)
        self.keys = torch.cat([self.keys, pad], dim=1)
        self.values = torch.cat([self.values, pad.clone()], dim=1)
        self.row_ids = torch.cat([self.row_ids, self.row_ids.new_full((extra,), -1)])
        self.row_labels = torch.cat([self.row_labels, self.row_labels.new_full((extra,), -1)])

    def _shrink_to_fit(self) -> None:
        """Release unused rows (e.g. before saving a deployable checkpoint)."""
        n = max(self.num_written, 1)
        self.keys = self.keys[:, : n * self.tokens].clone()
        self.values = self.values[:, : n * self.tokens].clone()
        self.row_ids = self.row_ids[:n].clone()
        self.row_labels = self.row_labels[:n].clone()

    def clear(self) -> None:
        self.keys.zero_()
        self.values.zero_()
        self.row_ids.fill_(-1)
        self.row_labels.fill_(-1)
        self.num_rows.zero_()
        self.id_to_row.clear()

    # ----------------------------------------------------------------------------------------- write
    @torch.no_grad()
    def write(self, keys: torch.Tensor, values: torch.Tensor, sample_ids: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Write one batch; under torch.distributed every rank writes every rank's batch.

        Args:
            keys, values: (B, H, tokens, Dh) from the memorising layer (detached here).
            sample_ids: (B,) ids; negative ids (validation, test, padding) are not written.
            labels: (B,) class of each sample, kept per row (for label-aware reads), or None.
        """
        plain = torch.Tensor.as_subclass  # MetaTensor inputs would carry metadata through every op
        keys, values = plain(keys.detach(), torch.Tensor), plain(values.detach(), torch.Tensor)
        sample_ids = plain(sample_ids.detach(), torch.Tensor).long().to(keys.device).reshape(-1)
        if sample_ids.shape[0] != keys.shape[0]:
            raise ValueError(f"memory write: {keys.shape[0]} images but {sample_ids.shape[0]} sample ids")
        labels = torch.full_like(sample_ids, -1) if labels is None else plain(labels.detach(), torch.Tensor).long().to(keys.device).reshape(-1)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            keys, values, sample_ids, labels = _all_gather_batch(keys, values, sample_ids, labels)
        keep = sample_ids >= 0
        if not bool(keep.any()):
            return
        keys, values, sample_ids, labels = keys[keep], values[keep], sample_ids[keep], labels[keep]
        # a sample appearing twice in one (gathered) batch: the last copy wins
        ids_list = sample_ids.tolist()
        last = {sid: i for i, sid in enumerate(ids_list)}
        order = sorted(last.values())
        keys, values, labels_list = keys[order], values[order], labels[order].tolist()
        ids_list = [ids_list[i] for i in order]

        rows, is_new = [], []
        for sid in ids_list:
            row = self.id_to_row.get(sid)
            is_new.append(row is None)
            if row is None:
                row = self.num_written + sum(is_new[:-1])
            rows.append(row)
        self._grow(self.num_written + sum(is_new))
        for sid, row, new, label in zip(ids_list, rows, is_new, labels_list):
            if new:
                self.id_to_row[sid] = row
                self.row_ids[row] = sid
            if label >= 0:
                self.row_labels[row] = label
        self.num_rows += sum(is_new)

        slots = (torch.tensor(rows, device=keys.device)[:, None] * self.tokens + torch.arange(self.tokens, device=keys.device)).reshape(-1)
        # (B, H, T, Dh) -> (H, B*T, Dh) in slot order
        new_k = nn.functional.normalize(keys.float(), dim=-1).permute(1, 0, 2, 3).reshape(self.num_heads, -1, self.head_dim)
        new_v = values.float().permute(1, 0, 2, 3).reshape(self.num_heads, -1, self.head_dim)
        m = self.momentum
        if m > 0:
            old_mask = torch.tensor(is_new, device=keys.device).logical_not().repeat_interleave(self.tokens)
            old_k, old_v = self.keys[:, slots].float(), self.values[:, slots].float()
            blend_k = nn.functional.normalize(m * old_k + (1 - m) * new_k, dim=-1)
            blend_v = m * old_v + (1 - m) * new_v
            new_k = torch.where(old_mask[None, :, None], blend_k, new_k)
            new_v = torch.where(old_mask[None, :, None], blend_v, new_v)
        self.keys[:, slots] = new_k.to(self.keys.dtype)
        self.values[:, slots] = new_v.to(self.values.dtype)

    @torch.no_grad()
    def remove(self, sample_ids: list[int]) -> int:
        """Forget samples: their rows are dropped and the rest compacted. Returns rows removed."""
        gone = {sid for sid in sample_ids if sid in self.id_to_row}
        if not gone:
            return 0
        keep_rows = [r for r in range(self.num_written) if int(self.row_ids[r]) not in gone]
        slots = (torch.tensor(keep_rows, dtype=torch.long)[:, None] * self.tokens + torch.arange(self.tokens)).reshape(-1)
        n = len(keep_rows)
        kept_k, kept_v, kept_ids = self.keys[:, slots].clone(), self.values[:, slots].clone(), self.row_ids[keep_rows].clone()
        kept_labels = self.row_labels[keep_rows].clone()
        self.clear()
        self.keys[:, : n * self.tokens] = kept_k
        self.values[:, : n * self.tokens] = kept_v
        self.row_ids[:n] = kept_ids
        self.row_labels[:n] = kept_labels
        self.num_rows.fill_(n)
        self.id_to_row = {int(s): r for r, s in enumerate(kept_ids.tolist())}
        return len(gone)

    # ------------------------------------------------------------------------------------------ read
    @torch.no_grad()
    def search(
        self, queries: torch.Tensor, k: int, exclude_ids: torch.Tensor | None = None, same_token: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k memory entries per query token and head, never the querying sample's own.

        Args:
            queries: (B, H, Tq, Dh), L2-normalised; query j is token position j.
            k: neighbours per query.
            exclude_ids: (B,) sample id of each query's image (its own entries are skipped), or None.
            same_token: query j searches only the entries of token position j (one per stored image,
                so the k neighbours are k different images); otherwise all entries.

        Returns:
            scores (B, H, Tq, k) with -inf where fewer than k entries exist, and entry indices
            (B, H, Tq, k) into the head's slot axis (0 where invalid).
        """
        b, h, tq, _ = queries.shape
        n = self.num_entries
        scores = queries.new_full((b, h, tq, k), float("-inf"), dtype=torch.float32)
        index = torch.zeros(b, h, tq, k, dtype=torch.long, device=queries.device)
        if n == 0:
            return scores, index
        own_rows = torch.full((b,), -1, dtype=torch.long, device=queries.device)
        if exclude_ids is not None:
            own_rows = torch.tensor([self.id_to_row.get(int(s), -1) for s in exclude_ids.tolist()], device=queries.device)
        if same_token:
            self._search_same_token(queries, k, own_rows, scores, index)
            return scores, index
        excluding = bool((own_rows >= 0).any())
        exact_torch = not use_faiss(b * tq, n, self.backend, queries.device.type)
        for head in range(h):
            q = queries[:, head].reshape(b * tq, -1).float()
            if exact_torch:
                # exact search with the querying sample's own slots masked before top-k
                sims = (q @ self.keys[head, :n].float().T).view(b, tq, n)
                if excluding:
                    rows = own_rows.clamp(min=0)
                    own = torch.zeros(b, n // self.tokens, dtype=torch.bool, device=sims.device)
                    own[torch.arange(b, device=sims.device), rows] = own_rows >= 0
                    sims = sims.masked_fill(own.repeat_interleave(self.tokens, dim=1)[:, None, :], float("-inf"))
                top = sims.topk(min(k, n), dim=-1)
                s, i = top.values, top.indices
            else:
                # faiss: ask for enough extra neighbours that k remain after dropping a sample's own
                s, i = knn_search(q, self.keys[head, :n], k + (self.tokens if excluding else 0), "faiss")
                s, i = s.to(queries.device).view(b, tq, -1), i.to(queries.device).view(b, tq, -1)
                s = s.masked_fill((i // self.tokens) == own_rows[:, None, None], float("-inf"))
                top = s.topk(min(k, s.shape[-1]), dim=-1)
                s, i = top.values, i.gather(-1, top.indices)
            kk = s.shape[-1]
            scores[:, head, :, :kk] = s
            index[:, head, :, :kk] = i
        return scores, index

    def _search_same_token(self, queries: torch.Tensor, k: int, own_rows: torch.Tensor, scores: torch.Tensor, index: torch.Tensor) -> None:
        """:meth:`search` restricted to each query's own token position (see ``same_token``); fills
        ``scores`` and ``index`` in place. ``own_rows`` (B,): each query image's row, -1 if none."""
        b, h, tq, _ = queries.shape
        rows = self.num_written
        extra = 1 if bool((own_rows >= 0).any()) else 0
        for head in range(h):
            for pos in range(tq):
                keys = self.keys[head, pos : rows * self.tokens : self.tokens]  # (rows, Dh): one per image
                s, i = knn_search(queries[:, head, pos].float(), keys, k + extra, self.backend)
                s, i = s.to(queries.device), i.to(queries.device)
                top = s.masked_fill(i == own_rows[:, None], float("-inf")).topk(min(k, s.shape[-1]), dim=-1)
                kk = top.values.shape[-1]
                scores[:, head, pos, :kk] = top.values
                index[:, head, pos, :kk] = i.gather(-1, top.indices) * self.tokens + pos

    def labels_at(self, index: torch.Tensor) -> torch.Tensor:
        """Class of the sample owning each entry index (-1 where unknown); same shape as ``index``."""
        return self.row_labels[index // self.tokens]

    def gather(self, index: torch.Tensor, with_values: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values at ``index`` (B, H, Tq, k) -> two (B, H, Tq, k, Dh) float tensors. With
        ``with_values=False`` (a read that only weighs labels) the values are an empty tensor, not gathered."""
        b, h, tq, k = index.shape
        flat = index.permute(1, 0, 2, 3).reshape(h, -1)  # (H, B*Tq*k)
        gather_idx = flat[..., None].expand(-1, -1, self.head_dim)
        keys = self.keys.gather(1, gather_idx).float().view(h, b, tq, k, -1).permute(1, 0, 2, 3, 4)
        if not with_values:
            return keys, keys.new_zeros(0)
        values = self.values.gather(1, gather_idx).float().view(h, b, tq, k, -1).permute(1, 0, 2, 3, 4)
        return keys, values

    # ------------------------------------------------------------------------------------ state dict
    def checksum(self, with_labels: bool = True) -> str:
        """sha256 of the written content (keys, values, sample ids, labels), for integrity checks on load."""
        n = self.num_written
        digest = hashlib.sha256()
        parts = [self.keys[:, : n * self.tokens], self.values[:, : n * self.tokens], self.row_ids[:n]]
        for t in parts + ([self.row_labels[:n]] if with_labels else []):
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "checksum"] = torch.tensor(list(bytes.fromhex(self.checksum())), dtype=torch.uint8)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # the memory grows during training: take the saved shapes before copying
        for name in ("keys", "values", "row_ids", "row_labels"):
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                if name in ("keys", "values") and saved.shape[::2] != getattr(self, name).shape[::2]:
                    error_msgs.append(
                        f"memory {prefix}{name}: saved shape {tuple(saved.shape)} does not fit heads/head_dim "
                        f"{tuple(getattr(self, name).shape[::2])}"
                    )
                    continue
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        saved_checksum = state_dict.get(prefix + "checksum")
        had_labels = prefix + "row_labels" in state_dict
        if not had_labels and prefix + "row_ids" in state_dict:
            # memories saved before labels were kept: every label unknown
            state_dict = dict(state_dict)
            state_dict[prefix + "row_labels"] = torch.full_like(state_dict[prefix + "row_ids"], -1)
            self.row_labels = torch.empty_like(state_dict[prefix + "row_ids"])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if prefix + "checksum" in unexpected_keys:
            unexpected_keys.remove(prefix + "checksum")
        n = int(self.num_rows)
        self.id_to_row = {int(s): r for r, s in enumerate(self.row_ids[:n].tolist())}
        if saved_checksum is not None and bytes(saved_checksum.tolist()).hex() != self.checksum(with_labels=had_labels):
            error_msgs.append(f"memory {prefix.rstrip('.')}: content does not match its checksum (corrupted or edited checkpoint)")

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}, tokens={self.tokens}, momentum={self.momentum}, samples={self.num_written}"


def forward_rows(forward_ids: torch.Tensor | None, batch_ids: torch.Tensor, labels: torch.Tensor | None, rows: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The sample ids and labels (rows,) to write a training forward's ``rows`` rows under, given the training batch's
    own ids and labels (B,) (what ``medmem.engine.MemoryWriter`` reads from the loader's batch).

    The forward may hold more rows than the batch: consistency training appends the strong views of unlabelled images,
    with sample id -1 (``medmem.engine.consistency.ConsistencyBatch``). They are no training cases: they keep id -1,
    which ``ExternalMemory.write`` skips, and label -1. The batch's images must then be the forward's rows with ids >= 0
    (``forward_ids`` (rows,), the ids the forward was given), in order; anything else would write keys under another
    image's id, so it is refused."""
    batch_ids = batch_ids.reshape(-1)
    if forward_ids is None or rows == batch_ids.shape[0]:
        return batch_ids, labels
    forward_ids = forward_ids.reshape(-1).long().to(batch_ids.device)
    written = forward_ids >= 0
    if forward_ids.shape[0] != rows or not torch.equal(forward_ids[written], batch_ids.long()):
        raise ValueError(f"memory write: the forward held {rows} rows with sample ids {forward_ids.tolist()}, which do not extend the "
                         f"batch's {batch_ids.tolist()} by rows of id -1")  # fmt: skip
    if labels is None:
        return forward_ids, None
    row_labels = torch.full_like(forward_ids, -1)
    row_labels[written] = labels.reshape(-1).long().to(row_labels.device)
    return forward_ids, row_labels


def _all_gather_batch(keys: torch.Tensor, values: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """Concatenate every rank's batch (ranks may hold different batch sizes: pad with id -1)."""
    world = dist.get_world_size()
    size = torch.tensor([keys.shape[0]], device=keys.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    pad = int(max(int(s) for s in sizes)) - keys.shape[0]
    if pad:
        keys = torch.cat([keys, keys.new_zeros(pad, *keys.shape[1:])])
        values = torch.cat([values, values.new_zeros(pad, *values.shape[1:])])
        ids = torch.cat([ids, ids.new_full((pad,), -1)])
        labels = torch.cat([labels, labels.new_full((pad,), -1)])
    out = []
    for t in (keys.contiguous(), values.contiguous(), ids.contiguous(), labels.contiguous()):
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t)
        out.append(torch.cat(parts))
    return out
