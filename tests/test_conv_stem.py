"""The convolutional stem: same token grid as the patch projection, local receptive fields, old fingerprints kept."""

from __future__ import annotations

import pytest
import torch

from medmem.networks import MemoryViT
from medmem.networks.conv_stem import ConvStemEmbedding

SMALL = dict(num_layers=2, hidden_size=48, mlp_dim=96, num_heads=4)


@pytest.mark.parametrize("spatial_dims,img,patch", [(2, 64, 8), (3, 16, 4)])
def test_tokens_follow_the_patch_grid(spatial_dims, img, patch):
    stem = ConvStemEmbedding(2, [img] * spatial_dims, [patch] * spatial_dims, 48, spatial_dims).eval()
    tokens = stem(torch.randn(3, 2, *[img] * spatial_dims))
    assert tokens.shape == (3, (img // patch) ** spatial_dims, 48)


def test_a_token_sees_only_its_neighbourhood():
    # three stride-2 3x3 convolutions see 15 px: the top-left token of a 64 px image ignores the far corner
    stem = ConvStemEmbedding(1, [64, 64], [8, 8], 48).eval()
    x = torch.randn(1, 1, 64, 64)
    y = x.clone()
    y[..., 32:, 32:] = torch.randn(1, 1, 32, 32)
    a, b = stem(x), stem(y)
    assert torch.allclose(a[0, 0], b[0, 0])
    assert not torch.allclose(a[0, -1], b[0, -1])


def test_memory_vit_with_a_conv_stem_reads_its_memory():
    torch.manual_seed(0)
    net = MemoryViT(1, 32, 8, 3, memory_match="same_token", memory_retrieval="key", memory_vote=0.9, memory_k=4, stem="conv", **SMALL).eval()
    x = torch.randn(6, 1, 32, 32)
    net.memory_vote = 0.0
    unused = sorted(set(range(3)) - set(net(x).argmax(-1).tolist()))  # classes the untrained head never picks
    assert unused
    net.memory_vote = 0.9
    net.write_memory(x, torch.arange(6), torch.full((6,), unused[0]))  # every stored case says that class
    assert net.memory_size() == 6 and net.config["stem"] == "conv"
    assert (net(x).argmax(-1) == unused[0]).all()  # a 0.9 vote of its neighbours outweighs the head


def test_stem_checks_its_settings():
    with pytest.raises(ValueError, match="power-of-two patch size"):
        MemoryViT(1, 36, 6, 3, stem="conv", **SMALL)
    with pytest.raises(ValueError, match="stem must be one of"):
        MemoryViT(1, 32, 8, 3, stem="hybrid", **SMALL)


def test_checkpoints_made_before_the_stem_keep_their_fingerprint():
    # the value a default patch-stem network had before the stem setting existed: its memories must still load
    net = MemoryViT(1, 32, 8, 3, **SMALL)
    assert net.fingerprint() == "5849c9742f0753e2595b79a313dc213158b2506cedf0db665a7cc4830824008c"
    assert MemoryViT(1, 32, 8, 3, stem="conv", **SMALL).fingerprint() != net.fingerprint()
