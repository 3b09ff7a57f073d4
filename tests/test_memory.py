"""External memory: kNN correctness, self-exclusion, ATMA arithmetic, gradients, save/load, modes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medmem.memory import ExternalMemory, knn_search
from medmem.networks import MemoryViT

H, DH, T = 2, 8, 5


def filled_memory(n_samples: int = 12, momentum: float = 0.9, backend: str = "torch", seed: int = 0) -> ExternalMemory:
    g = torch.Generator().manual_seed(seed)
    mem = ExternalMemory(H, DH, T, momentum=momentum, capacity=4, backend=backend)
    ids = torch.arange(100, 100 + n_samples)
    mem.write(torch.randn(n_samples, H, T, DH, generator=g), torch.randn(n_samples, H, T, DH, generator=g), ids)
    return mem


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_knn_matches_brute_force(backend):
    g = torch.Generator().manual_seed(1)
    keys, queries = torch.randn(500, 16, generator=g), torch.randn(37, 16, generator=g)
    scores, idx = knn_search(queries, keys, 10, backend)
    brute = (queries @ keys.T).topk(10, dim=1)
    torch.testing.assert_close(scores, brute.values, rtol=1e-5, atol=1e-5)
    assert torch.equal(idx, brute.indices)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_search_excludes_own_sample_and_equals_brute_force(backend):
    mem = filled_memory(backend=backend)
    q = F.normalize(torch.randn(3, H, 4, DH), dim=-1)
    exclude = torch.tensor([100, 105, -1])
    scores, idx = mem.search(q, k=7, exclude_ids=exclude)
    owner_rows = idx // T
    assert not (owner_rows[0] == mem.id_to_row[100]).any()
    assert not (owner_rows[1] == mem.id_to_row[105]).any()
    for b in range(3):
        for h in range(H):
            sims = q[b, h] @ mem.keys[h, : mem.num_entries].T  # (4, N)
            if exclude[b] >= 0:
                row = mem.id_to_row[int(exclude[b])]
                sims[:, row * T : (row + 1) * T] = float("-inf")
            brute = sims.topk(7, dim=-1)
            torch.testing.assert_close(scores[b, h], brute.values, rtol=1e-5, atol=1e-5)


def test_unwritten_slots_are_never_returned():
    mem = ExternalMemory(H, DH, T, capacity=64)  # 64 rows allocated, 2 written
    mem.write(torch.randn(2, H, T, DH), torch.randn(2, H, T, DH), torch.tensor([7, 9]))
    q = F.normalize(torch.randn(1, H, 3, DH), dim=-1)
    scores, idx = mem.search(q, k=20, exclude_ids=torch.tensor([7]))
    valid = torch.isfinite(scores)
    assert int(valid.sum(-1).max()) == T  # only sample 9's tokens exist to be found
    assert set((idx[valid] // T).tolist()) == {mem.id_to_row[9]}


def test_atma_arithmetic_over_three_writes():
    m = 0.75
    mem = ExternalMemory(1, 4, 1, momentum=m, capacity=1)
    ks = [torch.randn(1, 1, 1, 4) for _ in range(3)]
    vs = [torch.randn(1, 1, 1, 4) for _ in range(3)]
    for k, v in zip(ks, vs):
        mem.write(k, v, torch.tensor([3]))
    key = F.normalize(ks[0][0, 0, 0], dim=-1)
    value = vs[0][0, 0, 0]
    for k, v in zip(ks[1:], vs[1:]):
        key = F.normalize(m * key + (1 - m) * F.normalize(k[0, 0, 0], dim=-1), dim=-1)
        value = m * value + (1 - m) * v[0, 0, 0]
    torch.testing.assert_close(mem.keys[0, 0], key)
    torch.testing.assert_close(mem.values[0, 0], value)
    assert mem.num_written == 1  # three writes of one sample occupy one row


def test_momentum_zero_is_overwrite():
    a, b = ExternalMemory(H, DH, T, momentum=0.0), ExternalMemory(H, DH, T, momentum=0.0)
    first, second = torch.randn(2, H, T, DH), torch.randn(2, H, T, DH)
    a.write(first, first, torch.tensor([1, 2]))
    a.write(second, second, torch.tensor([1, 2]))
    b.write(second, second, torch.tensor([1, 2]))
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_memory_grows_without_reset_and_forgets():
    mem = ExternalMemory(H, DH, T, capacity=2)
    for i in range(5):
        mem.write(torch.randn(3, H, T, DH), torch.randn(3, H, T, DH), torch.arange(3 * i, 3 * i + 3))
    assert mem.num_written == 15 and mem.row_ids.shape[0] >= 15
    kept_values = mem.values[:, 5 * T : 6 * T].clone()  # sample 5
    assert mem.remove([0, 1, 2]) == 3
    assert mem.num_written == 12 and 0 not in mem.id_to_row
    row = mem.id_to_row[5]
    assert torch.equal(mem.values[:, row * T : (row + 1) * T], kept_values)


def tiny_vit(**kw) -> MemoryViT:
    torch.manual_seed(0)
    defaults = dict(in_channels=1, img_size=16, patch_size=4, num_classes=3, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2, memory_k=4)
    defaults.update(kw)
    return MemoryViT(**defaults)


def test_gradients_reach_queries_and_gate_not_memory():
    model = tiny_vit()
    x = torch.randn(6, 1, 16, 16)
    model.write_memory(x, torch.arange(6))
    model.train()
    out = model(x, torch.arange(6))
    out.square().sum().backward()
    layer = model.memory_layers()[0]
    assert layer.gate_logit.grad is not None and layer.gate_logit.grad.abs().sum() > 0
    assert layer.log_tau.grad.abs().sum() > 0  # the memory scores depend on the queries' path
    assert layer.qkv.weight.grad.abs().sum() > 0
    assert not layer.memory.keys.requires_grad and layer.memory.keys.grad is None
    assert all(not b.requires_grad for b in layer.memory.buffers())


def test_memory_changes_the_output_and_empty_memory_does_not():
    model = tiny_vit().eval()
    x = torch.randn(4, 1, 16, 16)
    empty = model(x)
    model.set_memory_mode("off")
    plain = model(x)
    torch.testing.assert_close(empty, plain)  # empty memory: gate falls back to local attention
    model.set_memory_mode("full")
    model.write_memory(torch.randn(8, 1, 16, 16), torch.arange(8))
    assert not torch.allclose(model(x), plain)


def test_off_mode_equals_monai_vit_with_same_weights():
    from monai.networks.nets import ViT

    model = tiny_vit(memory_mode="off").eval()
    vit = ViT(1, 16, 4, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2, classification=True, num_classes=3, qkv_bias=True, spatial_dims=2, post_activation=None).eval()
    result = vit.load_state_dict(model.state_dict(), strict=False)
    assert result.missing_keys == []
    x = torch.randn(3, 1, 16, 16)
    torch.testing.assert_close(model(x), vit(x)[0])


def test_prototypes_mode_scripts_and_matches_eager():
    model = tiny_vit(memory_mode="prototypes", num_prototypes=6).eval()
    layer = model.memory_layers()[0]
    layer.proto_keys.normal_()
    layer.proto_values.normal_()
    scripted = torch.jit.script(model)
    x = torch.randn(5, 1, 16, 16)
    torch.testing.assert_close(scripted(x), model(x))


@pytest.mark.parametrize("combiner", ["gate", "joint"])
@pytest.mark.parametrize("queries", ["all", "cls"])
def test_2d_3d_odd_batches_and_batch_of_one(combiner, queries):
    for dims, shape in ((2, (16, 16)), (3, (8, 8, 8))):
        model = tiny_vit(spatial_dims=dims, img_size=shape[0], combiner=combiner, memory_queries=queries)
        model.write_memory(torch.randn(3, 1, *shape), torch.arange(3))
        for b in (1, 3, 7):
            model.train()
            out = model(torch.randn(b, 1, *shape), torch.arange(b))
            assert out.shape == (b, 3) and torch.isfinite(out).all()
            model.commit_memory(torch.arange(b))
        assert model.memory_size() == 7


def test_state_dict_round_trip_is_exact_and_mismatch_is_refused():
    model = tiny_vit()
    model.write_memory(torch.randn(9, 1, 16, 16), torch.arange(9) * 10)
    fresh = tiny_vit()
    fresh.load_state_dict(model.state_dict())
    for a, b in zip(model.memory_layers(), fresh.memory_layers()):
        assert torch.equal(a.memory.keys, b.memory.keys) and torch.equal(a.memory.values, b.memory.values)
        assert a.memory.id_to_row == b.memory.id_to_row
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(model.eval()(x), fresh.eval()(x))
    other = tiny_vit(hidden_size=48)
    with pytest.raises(RuntimeError, match="another configuration"):
        other.load_state_dict(model.state_dict())


def test_auto_backend_rule():
    from medmem.memory.knn import FAISS_MIN_ENTRIES, FAISS_MIN_QUERIES, use_faiss

    assert not use_faiss(64, FAISS_MIN_ENTRIES - 1, "auto")  # class-token queries, small memory: torch
    assert use_faiss(64, FAISS_MIN_ENTRIES, "auto")
    assert use_faiss(FAISS_MIN_QUERIES, 2_000, "auto")  # every token of a batch: faiss
    assert not use_faiss(FAISS_MIN_QUERIES, 10**7, "auto", device_type="cuda")
    assert use_faiss(1, 1, "faiss") and not use_faiss(10**6, 10**9, "torch")
    with pytest.raises(ValueError, match="backend"):
        use_faiss(1, 1, "annoy")


def test_tampered_memory_fails_its_checksum():
    model = tiny_vit()
    model.write_memory(torch.randn(4, 1, 16, 16), torch.arange(4))
    state = model.state_dict()
    key = "blocks.1.attn.memory.values"
    state[key] = state[key].clone()
    state[key][0, 0, 0] += 1.0
    with pytest.raises(RuntimeError, match="does not match its checksum"):
        tiny_vit().load_state_dict(state)


def test_half_precision_storage():
    model = tiny_vit(memory_dtype="float16")
    model.write_memory(torch.randn(5, 1, 16, 16), torch.arange(5))
    memory = model.memory_layers()[0].memory
    assert memory.keys.dtype == torch.float16 and memory.values.dtype == torch.float16
    model.train()
    out = model(torch.randn(3, 1, 16, 16), torch.arange(3))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    fresh = tiny_vit(memory_dtype="float16")
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.memory_layers()[0].memory.keys, memory.keys)


def test_param_groups_single_out_memory_scalars():
    from medmem.networks import param_groups

    model = tiny_vit()
    groups = param_groups(model, lr=1e-3, weight_decay=0.05, memory_lr_scale=10)
    layer = model.memory_layers()[0]
    assert {id(p) for p in groups[1]["params"]} == {id(layer.gate_logit), id(layer.log_tau)}
    assert groups[1]["lr"] == 1e-2 and groups[1]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_label_aware_memory_reads_neighbour_labels():
    model = tiny_vit(memory_labels=True)
    x, labels = torch.randn(6, 1, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    model.write_memory(x, torch.arange(6), labels)
    memory = model.memory_layers()[0].memory
    assert torch.equal(memory.row_labels[:6], labels)
    model.train()
    model(x, torch.arange(6)).square().sum().backward()
    grad = model.memory_layers()[0].label_embedding.grad
    assert grad[1:].abs().sum() > 0 and grad[0].abs().sum() == 0  # known labels used, "unknown" row not
    memory.remove([1])
    assert memory.row_labels[: memory.num_written].tolist() == [0, 2, 0, 1, 2]
    fresh = tiny_vit(memory_labels=True)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.memory_layers()[0].memory.row_labels[:5], memory.row_labels[:5])


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_same_token_search_finds_distinct_images(backend):
    mem = filled_memory(n_samples=20, backend=backend)
    q = F.normalize(torch.randn(2, H, 3, DH), dim=-1)
    scores, idx = mem.search(q, k=6, exclude_ids=torch.tensor([100, -1]), same_token=True)
    assert torch.equal(idx % T, torch.arange(3).view(1, 1, 3, 1).expand_as(idx))  # token j -> token j
    rows = idx // T
    assert not (rows[0] == mem.id_to_row[100]).any()
    for b in range(2):
        for h in range(H):
            for j in range(3):
                assert len(set(rows[b, h, j].tolist())) == 6  # six different images
                sims = q[b, h, j] @ mem.keys[h, j : mem.num_entries : T].T
                if b == 0:
                    sims[mem.id_to_row[100]] = float("-inf")
                torch.testing.assert_close(scores[b, h, j], sims.topk(6).values, rtol=1e-5, atol=1e-5)


def test_key_retrieval_finds_the_image_itself_unless_excluded():
    model = tiny_vit(memory_match="same_token", memory_retrieval="key").eval()
    x, ids = torch.randn(8, 1, 16, 16), torch.arange(8) + 50
    model.write_memory(x, ids)
    layer = model.memory_layers()[0]
    layer.record_evidence = True
    model(x)  # no exclusion at inference: each image's nearest stored image is itself
    assert torch.equal(layer.evidence["sample_ids"][:, 0, 0, 0], ids)
    model(x, ids)  # excluded (as in training): never itself
    assert not (layer.evidence["sample_ids"][..., 0] == ids.view(-1, 1, 1)).any()


def test_random_retrieval_reads_entries_unrelated_to_the_image():
    """The study control: a fresh random probe per forward, so an image does not find itself first (key retrieval does,
    above) and two reads of the same batch pick different entries; the exclusion of its own entries still holds."""
    model = tiny_vit(memory_match="same_token", memory_retrieval="random", memory_k=2).eval()
    x, ids = torch.randn(16, 1, 16, 16), torch.arange(16) + 50
    model.write_memory(torch.cat([x, torch.randn(48, 1, 16, 16)]), torch.arange(64) + 50)
    layer = model.memory_layers()[0]
    layer.record_evidence = True
    torch.manual_seed(1)
    model(x)
    first = layer.evidence["sample_ids"][..., 0].clone()  # (B, H, k)
    assert (first[:, :, 0] == ids.view(-1, 1)).float().mean() < 0.25  # key retrieval: 1.0
    model(x)
    assert not torch.equal(layer.evidence["sample_ids"][..., 0], first)
    model(x, ids)
    assert not (layer.evidence["sample_ids"][..., 0] == ids.view(-1, 1, 1)).any()


def test_empty_prototype_slots_are_never_read():
    """A memory smaller than the prototype budget leaves zero prototypes; their values must not leak in."""
    model = tiny_vit(num_prototypes=4, memory_match="same_token").eval()
    model.write_memory(torch.randn(2, 1, 16, 16), torch.arange(2))
    from medmem.memory.prototypes import kmeans_prototypes

    layer = model.memory_layers()[0]
    keys, values, members = kmeans_prototypes(layer.memory, 4, token=0)
    assert (keys[:, 2:] == 0).all() and (members[:, :2, 0] >= 0).all()  # 2 images -> 2 clusters
    layer.proto_keys, layer.proto_values = keys, values
    model.set_memory_mode("prototypes")
    x = torch.randn(3, 1, 16, 16)
    before = model(x)
    layer.proto_values[:, 2:] = 1e3
    torch.testing.assert_close(model(x), before)


def test_memory_vote_is_the_attention_weighted_label_histogram():
    model = tiny_vit(memory_match="same_token", memory_retrieval="key", memory_vote=0.5).eval()
    x, y = torch.randn(8, 1, 16, 16), torch.arange(8) % 3
    model.write_memory(x, torch.arange(8), y)
    layer = model.memory_layers()[0]
    layer.record_evidence = True
    out = model(x[:3])
    w, owners = layer.evidence["weights"], layer.evidence["sample_ids"][..., 0]  # (B, H, k)
    by_hand = torch.zeros(3, 2, 3).scatter_add_(2, y[owners], w)
    by_hand = (by_hand / by_hand.sum(-1, keepdim=True)).mean(1)
    torch.testing.assert_close(layer.last_vote, by_hand)
    model.memory_vote = 0.0
    plain = torch.softmax(model(x[:3]), -1)
    torch.testing.assert_close(out.exp(), 0.5 * plain + 0.5 * by_hand)


def test_written_cases_move_the_vote_without_training():
    """Writing labelled copies of an image (no gradient step) pulls its prediction to their class."""
    model = tiny_vit(memory_match="same_token", memory_retrieval="key", memory_vote=0.5).eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 1, 16, 16, generator=g)
    model.write_memory(x, torch.arange(6), torch.tensor([0, 0, 0, 1, 1, 1]))
    probe = torch.randn(1, 1, 16, 16, generator=g)
    before = model(probe).exp()[0, 2]
    model.write_memory(probe.repeat(4, 1, 1, 1) + 0.01 * torch.randn(4, 1, 16, 16, generator=g), torch.arange(100, 104), torch.full((4,), 2))
    assert model(probe).exp()[0, 2] > before + 0.2


def test_prototype_vote_scripts_and_carries_member_labels():
    from medmem.memory.prototypes import kmeans_prototypes, set_prototype_labels

    model = tiny_vit(memory_match="same_token", memory_retrieval="key", memory_vote=0.5, num_prototypes=4).eval()
    model.write_memory(torch.randn(12, 1, 16, 16), torch.arange(12), torch.arange(12) % 3)
    layer = model.memory_layers()[0]
    layer.proto_keys, layer.proto_values, layer.proto_members = kmeans_prototypes(layer.memory, 4, token=0)
    set_prototype_labels(layer)
    assert torch.allclose(layer.proto_labels.sum(-1), torch.ones(2, 4))  # each prototype: a class distribution
    model.set_memory_mode("prototypes")
    x = torch.randn(3, 1, 16, 16)
    eager = model(x)
    torch.testing.assert_close(torch.jit.script(model)(x), eager)
    assert torch.allclose(eager.exp().sum(-1), torch.ones(3))


def test_key_retrieval_reads_only_the_k_nearest_prototypes():
    from medmem.memory.prototypes import kmeans_prototypes, set_prototype_labels

    model = tiny_vit(memory_match="same_token", memory_retrieval="key", memory_vote=0.5, num_prototypes=6, memory_k=2).eval()
    model.write_memory(torch.randn(12, 1, 16, 16), torch.arange(12), torch.arange(12) % 3)
    layer = model.memory_layers()[0]
    layer.proto_keys, layer.proto_values, layer.proto_members = kmeans_prototypes(layer.memory, 6, token=0)
    set_prototype_labels(layer)
    model.set_memory_mode("prototypes")
    layer.record_evidence = True
    x = torch.randn(3, 1, 16, 16)
    eager = model(x)
    assert ((layer.evidence["weights"] > 0).sum(-1) == 2).all()  # (B, H): two prototypes read each
    layer.record_evidence = False
    torch.testing.assert_close(torch.jit.script(model)(x), eager)


def test_a_memory_that_fits_in_the_prototype_budget_is_kept_exactly():
    """Fewer stored images than prototypes: the deployable prototypes are the entries themselves (no
    k-means merging, no distillation), so prototypes mode answers exactly as the full memory."""
    from medmem.memory.prototypes import summarize_memory

    model = tiny_vit(memory_match="same_token", memory_retrieval="key", memory_vote=0.5, num_prototypes=16).eval()
    g = torch.Generator().manual_seed(4)
    x, y, ids = torch.randn(12, 1, 16, 16, generator=g), torch.arange(12) % 3, torch.arange(12)
    model.write_memory(x, ids, y)
    probe = torch.randn(5, 1, 16, 16, generator=g)
    full = model(probe)
    report = summarize_memory(model, [{"image": x, "label": y, "sample_id": ids}], epochs=2)
    assert report.steps == 0
    model.set_memory_mode("prototypes")
    torch.testing.assert_close(model(probe), full, rtol=1e-4, atol=1e-5)
    layer = model.memory_layers()[0]
    assert sorted(layer.proto_members[0, :12, 0].tolist()) == list(range(12))


def test_distillation_can_start_from_the_prototypes_already_made():
    """``init="current"`` distils the layer's present prototypes (the k-means ones the summarise step has
    already scored) instead of clustering again: with no step they come back unchanged, whereas k-means
    would replace them; a different budget is refused."""
    from medmem.memory.prototypes import summarize_memory

    model = tiny_vit(memory_match="same_token", memory_retrieval="key", memory_vote=0.5, num_prototypes=4).eval()
    g = torch.Generator().manual_seed(5)
    x, y, ids = torch.randn(12, 1, 16, 16, generator=g), torch.arange(12) % 3, torch.arange(12)
    model.write_memory(x, ids, y)
    batches = [{"image": x, "label": y, "sample_id": ids}]
    summarize_memory(model, batches, epochs=0)
    layer = model.memory_layers()[0]
    marked = torch.nn.functional.normalize(torch.randn(layer.proto_keys.shape, generator=g), dim=-1)
    layer.proto_keys = marked.clone()
    summarize_memory(model, batches, epochs=0, init="current")
    torch.testing.assert_close(layer.proto_keys, marked)
    summarize_memory(model, batches, epochs=0)
    assert not torch.allclose(layer.proto_keys, marked)
    report = summarize_memory(model, batches, epochs=1, init="current")
    assert report.steps == 1
    with pytest.raises(ValueError, match="needs 6 prototypes"):
        summarize_memory(model, batches, num_prototypes=6, epochs=0, init="current")


def test_vote_combiner_keeps_features_and_reads_only_labels():
    """``combiner="vote"``: the class token's features are those of the same weights with no memory,
    whatever the memory holds; the memory reaches the output only through the label vote."""
    model = tiny_vit(memory_match="same_token", memory_retrieval="key", memory_vote=0.5, combiner="vote").eval()
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(8, 1, 16, 16, generator=g), torch.arange(8) % 3
    plain = tiny_vit(memory_mode="off")
    plain.load_state_dict(model.state_dict(), strict=False)  # same weights; a plain network has no memory buffers
    plain.eval()
    model.write_memory(x, torch.arange(8), y)
    torch.testing.assert_close(model.forward_features(x[:3]), plain.forward_features(x[:3]))
    layer = model.memory_layers()[0]
    fused = model(x[:3]).exp()
    head = torch.softmax(plain(x[:3]), -1)
    torch.testing.assert_close(fused, 0.5 * head + 0.5 * layer.last_vote)
    assert (fused - head).abs().max() > 1e-3  # the vote does move the output
    layer.memory.values.fill_(float("nan"))  # the values never reach the output
    torch.testing.assert_close(model(x[:3]).exp(), fused)
    with pytest.raises(ValueError, match="memory_vote > 0"):
        tiny_vit(combiner="vote")


def test_vote_combiner_scripts_in_prototypes_mode():
    model = tiny_vit(memory_match="same_token", memory_retrieval="key", memory_vote=0.5, combiner="vote", memory_mode="prototypes").eval()
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))


def test_token_keys_reads_one_token_of_each_row():
    g = torch.Generator().manual_seed(3)
    mem = ExternalMemory(H, DH, T, momentum=0.0, capacity=2)  # grows past its capacity
    keys = torch.randn(6, H, T, DH, generator=g)
    ids = torch.tensor([40, 41, 42, 43, 44, 45])
    mem.write(keys, torch.randn(6, H, T, DH, generator=g), ids)
    expected = F.normalize(keys, dim=-1)  # (B, H, T, Dh) as stored
    torch.testing.assert_close(mem.token_keys(0), expected[:, :, 0].transpose(0, 1))  # (H, rows, Dh), row order
    torch.testing.assert_close(mem.token_keys(3, torch.tensor([45, 40])), expected[[5, 0], :, 3].transpose(0, 1))
    assert not torch.allclose(mem.token_keys(0)[:, 1:], mem.keys[:, 1:6])  # slot r is not row r's class token
    with pytest.raises(KeyError, match="99"):
        mem.token_keys(0, torch.tensor([40, 99]))
    with pytest.raises(IndexError):
        mem.token_keys(T)
