"""Under torch.distributed (gloo, 2 CPU processes) every rank ends each step with the same memory."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from medmem.networks import MemoryViT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)  # same weights on both ranks, as DDP guarantees
    model = MemoryViT(1, 16, 4, 3, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2, memory_k=4).train()
    g = torch.Generator().manual_seed(100 + rank)  # different data per rank
    for step in range(3):
        batch = 3 + rank  # uneven batch sizes across ranks
        ids = torch.arange(batch) + 10 * rank + 100 * (step % 2)  # step 2 revisits step 0's ids (ATMA)
        model(torch.randn(batch, 1, 16, 16, generator=g), ids)
        model.commit_memory(ids, ids % 3)
    memory = model.memory_layers()[0].memory
    torch.save({"keys": memory.keys[:, : memory.num_entries], "values": memory.values[:, : memory.num_entries], "ids": memory.sample_ids(), "labels": memory.row_labels[: memory.num_written]}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_gloo_ranks_end_with_identical_memories(tmp_path):
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    expected_ids = {0, 1, 2, 10, 11, 12, 13} | {100, 101, 102, 110, 111, 112, 113}
    assert set(a["ids"].tolist()) == expected_ids
    assert torch.equal(a["ids"], b["ids"]) and torch.equal(a["labels"], b["labels"])
    assert torch.equal(a["labels"], a["ids"] % 3)
    assert torch.equal(a["keys"], b["keys"]) and torch.equal(a["values"], b["values"])
