"""Test-time averaging over the 8 flips and right-angle turns (medmem.engine.dihedral)."""

import pytest
import torch

from medmem.engine.dihedral import DihedralInferer, dihedral_probabilities, dihedral_views


def linear_network(num_classes: int = 3, side: int = 5, seed: int = 0) -> torch.nn.Module:
    """Logits from every pixel with its own weight: a network that sees orientation."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * side * side, num_classes))


def test_the_views_are_the_eight_distinct_orientations_and_the_first_is_the_image():
    image = torch.arange(2 * 25, dtype=torch.float32).reshape(1, 2, 5, 5)  # no symmetry: every orientation differs
    views = dihedral_views(image)
    assert len(views) == 8 and torch.equal(views[0], image)
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    # closed under a turn and a mirror: turning or mirroring any view gives another view
    keys = {tuple(v.flatten().tolist()) for v in views}
    for view in views:
        assert tuple(torch.rot90(view, 1, dims=(-2, -1)).flatten().tolist()) in keys
        assert tuple(view.flip(-2).flatten().tolist()) in keys


def test_averaged_probabilities_are_the_mean_softmax_and_do_not_depend_on_orientation():
    net, images = linear_network(), torch.randn(4, 2, 5, 5)
    expected = torch.stack([net(v).softmax(-1) for v in dihedral_views(images)]).mean(0)
    averaged = dihedral_probabilities(net, images)
    assert torch.allclose(averaged, expected, atol=1e-6)
    assert torch.allclose(averaged.sum(-1), torch.ones(4), atol=1e-6)
    # the network alone changes its answer when the image turns; the average does not
    turned, mirrored = torch.rot90(images, 1, dims=(-2, -1)), images.flip(-2)
    assert not torch.allclose(net(turned).softmax(-1), net(images).softmax(-1), atol=1e-3)
    assert torch.allclose(dihedral_probabilities(net, turned), averaged, atol=1e-6)
    assert torch.allclose(dihedral_probabilities(net, mirrored), averaged, atol=1e-6)


def test_the_inferer_output_softmaxes_back_to_the_averaged_probabilities():
    net, images = linear_network(seed=1), torch.randn(3, 2, 5, 5)
    assert torch.allclose(DihedralInferer()(images, net).softmax(-1), dihedral_probabilities(net, images), atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 1, 4, 4, 4), (2, 1, 4, 6)])
def test_volumes_and_non_square_images_are_refused(shape):
    with pytest.raises(ValueError, match="dihedral views need"):
        dihedral_views(torch.zeros(shape))
