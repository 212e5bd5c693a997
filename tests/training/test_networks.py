"""Networks: the reference CNN's shapes and size, MONAI networks by name in 2D and 3D."""

from __future__ import annotations

import pytest
import torch

from fedkper_monai.training import NETWORK_NAMES, ReferenceCNN, build_network


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_reference_cnn_2d_shape_and_parameter_count_match_the_reference_network():
    net = ReferenceCNN(spatial_dims=2, in_channels=1, num_classes=10, image_size=(28, 28))
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    # By hand: conv 1->32 (5x5) + bias, conv 32->64 (5x5) + bias, FC 64*7*7 -> 512, classifier 512 -> 10.
    expected = (1 * 32 * 25 + 32) + (32 * 64 * 25 + 64) + (3136 * 512 + 512) + (512 * 10 + 10)
    assert expected == 1_663_370
    assert count_parameters(net) == expected


def test_reference_cnn_3d_sizes_its_flatten_layer_from_image_size():
    net = ReferenceCNN(spatial_dims=3, in_channels=2, num_classes=4, image_size=(12, 16, 9))
    assert net(torch.randn(2, 2, 12, 16, 9)).shape == (2, 4)
    # 12 -> 6 -> 3, 16 -> 8 -> 4, 9 -> 4 -> 2 after two poolings.
    flat = 64 * 3 * 4 * 2
    expected = (2 * 32 * 125 + 32) + (32 * 64 * 125 + 64) + (flat * 512 + 512) + (512 * 4 + 4)
    assert count_parameters(net) == expected


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"spatial_dims": 1, "image_size": (28,)}, "spatial_dims"),
        ({"spatial_dims": 2, "image_size": (28, 28, 28)}, "2 entries"),
        ({"spatial_dims": 2, "image_size": (3, 28)}, "at least 4"),
    ],
)
def test_reference_cnn_rejects_bad_geometry(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReferenceCNN(**kwargs)


def test_build_network_reference_defaults_to_28_per_side():
    net = build_network("reference_cnn", spatial_dims=2, in_channels=3, num_classes=8)
    assert net(torch.randn(2, 3, 28, 28)).shape == (2, 8)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_build_network_monai_resnet_in_2d_and_3d(spatial_dims):
    net = build_network("resnet10", spatial_dims=spatial_dims, in_channels=1, num_classes=3)
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, *(16,) * spatial_dims)).shape == (2, 3)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_build_network_monai_densenet_in_2d_and_3d(spatial_dims):
    net = build_network("densenet121", spatial_dims=spatial_dims, in_channels=2, num_classes=5,
                        image_size=(32,) * spatial_dims)
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(1, 2, *(32,) * spatial_dims)).shape == (1, 5)


def test_build_network_every_name_builds_in_2d():
    for name in NETWORK_NAMES:
        net = build_network(name, spatial_dims=2, in_channels=1, num_classes=2, image_size=(32, 32)).eval()
        with torch.no_grad():
            expected = (1, 2, 32, 32) if name in ("unet", "segresnet") else (1, 2)  # segmentation: logits per pixel
            assert net(torch.randn(1, 1, 32, 32)).shape == expected, name


def test_build_network_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown network 'vgg16'.*reference_cnn.*resnet18"):
        build_network("vgg16", spatial_dims=2, in_channels=1, num_classes=2)


def test_build_network_rejects_images_too_small_for_densenet():
    # A 28x28 MedMNIST image would otherwise fail deep inside DenseNet's forward pass.
    with pytest.raises(ValueError, match="densenet121.*>= 29"):
        build_network("densenet121", spatial_dims=2, in_channels=1, num_classes=2, image_size=(28, 28))
