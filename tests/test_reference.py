"""The CNN reference network fits the bundle's calling convention."""

import torch

from medmem.networks import ResNetClassifier


def test_resnet_reference_returns_logits_and_ignores_memory_arguments():
    net = ResNetClassifier(in_channels=1, num_classes=4, img_size=32, patch_size=8, memory_mode="full").eval()
    x = torch.randn(3, 1, 32, 32)
    out = net(x, torch.arange(3))
    assert out.shape == (3, 4)
    torch.testing.assert_close(out, net(x))
    net.set_memory_mode("prototypes")  # accepted, no effect
    torch.testing.assert_close(out, net(x))
