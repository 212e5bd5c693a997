"""Networks by name, 2D or 3D: the paper's reference CNN and MONAI classifiers, and MONAI's ``unet`` and
``segresnet`` for segmentation (logits ``(N, num_classes, *spatial)``, one channel per class).

No pretrained weights are ever downloaded: every network starts from its own (seeded) initialization, which
is what federated training from scratch needs and what an offline hospital site can run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.networks import nets
from monai.networks.layers.factories import Conv, Pool
from torch import nn

from fedkper_monai.errors import FedKPerError
from fedkper_monai.job_fields import check_network

__all__ = ["NETWORK_NAMES", "ReferenceCNN", "build_network", "check_network_matches"]


class ReferenceCNN(nn.Module):
    """The FedKPer/FedNTD reference network (docs/design.md, The reference setting), for 2D or 3D input.

    Two 5x5 (5x5x5) convolutions with 32 and 64 filters ("same" padding), each followed by ReLU and 2x max
    pooling, then a fully connected layer of 512 units with ReLU and a linear classifier. For a 28x28 input
    the flattened feature size is 64 * 7 * 7 = 3136, as in the reference.

    Args:
        spatial_dims: 2 or 3.
        in_channels: number of input channels ``C``.
        num_classes: number of output logits.
        image_size: spatial size of the input, one entry per spatial dimension; sets the flatten size.
        conv_channels: filters of the two convolutions.
        hidden_units: width of the fully connected layer.

    Shapes:
        input ``(N, C, *image_size)``, output logits ``(N, num_classes)``.

    Example:
        >>> net = ReferenceCNN(spatial_dims=2, in_channels=1, num_classes=10, image_size=(28, 28))
        >>> net(torch.zeros(4, 1, 28, 28)).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: Sequence[int] = (28, 28),
        conv_channels: Sequence[int] = (32, 64),
        hidden_units: int = 512,
    ) -> None:
        super().__init__()
        _check_spatial_dims(spatial_dims)
        image_size = tuple(int(s) for s in image_size)
        if len(image_size) != spatial_dims:
            raise ValueError(f"image_size {image_size} must have {spatial_dims} entries (spatial_dims={spatial_dims})")
        # Two 2x poolings: every spatial side must survive both.
        if min(image_size) < 4:
            raise ValueError(f"image_size {image_size}: every side must be at least 4 for two 2x poolings")
        if len(conv_channels) != 2:
            raise ValueError(f"conv_channels must have two entries, got {tuple(conv_channels)}")
        if in_channels < 1 or num_classes < 1 or hidden_units < 1:
            raise ValueError("in_channels, num_classes and hidden_units must be positive")
        conv = Conv[Conv.CONV, spatial_dims]
        pool = Pool[Pool.MAX, spatial_dims]
        first, second = (int(c) for c in conv_channels)
        self.features = nn.Sequential(
            conv(in_channels, first, kernel_size=5, padding=2),
            nn.ReLU(),
            pool(kernel_size=2, stride=2),
            conv(first, second, kernel_size=5, padding=2),
            nn.ReLU(),
            pool(kernel_size=2, stride=2),
            nn.Flatten(),
        )
        flat_size = second * math.prod(side // 2 // 2 for side in image_size)
        self.hidden = nn.Sequential(nn.Linear(flat_size, hidden_units), nn.ReLU())
        self.classifier = nn.Linear(hidden_units, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.hidden(self.features(x)))


def _check_spatial_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


def _densenet(factory: Callable[..., nn.Module]) -> Callable[[int, int, int], nn.Module]:
    def build(spatial_dims: int, in_channels: int, num_classes: int) -> nn.Module:
        return factory(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, pretrained=False)

    return build


def _resnet(factory: Callable[..., nn.Module]) -> Callable[[int, int, int], nn.Module]:
    def build(spatial_dims: int, in_channels: int, num_classes: int) -> nn.Module:
        return factory(
            pretrained=False, spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=num_classes
        )

    return build


def _efficientnet(model_name: str) -> Callable[[int, int, int], nn.Module]:
    def build(spatial_dims: int, in_channels: int, num_classes: int) -> nn.Module:
        return nets.EfficientNetBN(
            model_name, pretrained=False, spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes
        )

    return build


def _unet(spatial_dims: int, in_channels: int, num_classes: int, features: Sequence[int] | None = None) -> nn.Module:
    channels = tuple(int(c) for c in (features or (16, 32, 64, 128)))
    return nets.UNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=num_classes,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=1,
    )


def _segresnet(spatial_dims: int, in_channels: int, num_classes: int, features: Sequence[int] | None = None) -> nn.Module:
    init_filters = int(features[0]) if features else 8
    return nets.SegResNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, init_filters=init_filters)


# Segmentation networks: name -> (builder, what every spatial side must be a multiple of given the features).
_SEGMENTATION_NETWORKS: dict[str, tuple[Callable[..., nn.Module], Callable[[Sequence[int] | None], int]]] = {
    "unet": (_unet, lambda features: 2 ** (len(features or (16, 32, 64, 128)) - 1)),
    "segresnet": (_segresnet, lambda features: 8),  # three 2x downsamplings (blocks_down 1, 2, 2, 4)
}

# name -> (builder(spatial_dims, in_channels, num_classes), smallest spatial side the network accepts).
# The minimum was measured on MONAI 1.6: DenseNet and EfficientNet-B0 downsample by 32 and fail with a shape
# error deep inside the forward pass below it (e.g. on 28x28 MedMNIST); ResNet ends in an adaptive pooling and
# takes any size.
_MONAI_NETWORKS: dict[str, tuple[Callable[[int, int, int], nn.Module], int]] = {
    "densenet121": (_densenet(nets.DenseNet121), 29),
    "densenet169": (_densenet(nets.DenseNet169), 29),
    "densenet201": (_densenet(nets.DenseNet201), 29),
    "resnet10": (_resnet(nets.resnet10), 1),
    "resnet18": (_resnet(nets.resnet18), 1),
    "resnet34": (_resnet(nets.resnet34), 1),
    "resnet50": (_resnet(nets.resnet50), 1),
    "efficientnet-b0": (_efficientnet("efficientnet-b0"), 32),
}

NETWORK_NAMES: tuple[str, ...] = ("reference_cnn", *_MONAI_NETWORKS, *_SEGMENTATION_NETWORKS)
"""Names accepted by :func:`build_network`."""


def build_network(
    name: str,
    *,
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    image_size: Sequence[int] | None = None,
    features: Sequence[int] | None = None,
) -> nn.Module:
    """Build a network by name, randomly initialized (never downloads weights).

    Args:
        name: one of :data:`NETWORK_NAMES` (``"reference_cnn"``, ``"densenet121"``, ``"resnet18"``, ...).
        spatial_dims: 2 or 3.
        in_channels: number of input channels.
        num_classes: number of output logits.
        image_size: spatial input size. Required by ``"reference_cnn"`` to size its fully connected layer
            (default 28 per side); for MONAI networks it is optional and, when given, checked against the
            smallest input the network accepts (segmentation networks: sides a multiple of their downsampling).
        features: segmentation networks only: ``unet``'s channels per level (default ``[16, 32, 64, 128]``,
            a 2x downsampling between levels), ``segresnet``'s first entry is its initial filters (default 8).

    Returns:
        A module mapping ``(N, in_channels, *image_size)`` to logits ``(N, num_classes)``; a segmentation
        network to ``(N, num_classes, *image_size)``.

    Raises:
        ValueError: unknown name (the message lists the valid ones), an argument that network does not take
            or of the wrong type (a :class:`~fedkper_monai.errors.DataError` naming it, see
            :func:`fedkper_monai.job_fields.check_network`), or an image too small for the network.

    Example:
        >>> net = build_network("resnet10", spatial_dims=3, in_channels=1, num_classes=3)
        >>> net(torch.zeros(2, 1, 16, 16, 16)).shape
        torch.Size([2, 3])
    """
    # The spec comes from a job: checked by the rule the site, the server and the launchers apply to it, so a
    # num_classes of "x" or a stray argument is a clear error naming it, not a TypeError deep in a constructor.
    spec = {"name": name, "spatial_dims": spatial_dims, "in_channels": in_channels, "num_classes": num_classes}
    spec.update({key: value for key, value in (("image_size", image_size), ("features", features)) if value is not None})
    check_network(spec, source="network spec", field="")
    if name == "bundle":  # this participant's own MONAI bundle ($FEDKPER_BUNDLE_ROOT), never a path from the job
        from fedkper_monai.site_bundle import build_bundle_network

        return build_bundle_network(spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    if name == "reference_cnn":
        size = tuple(image_size) if image_size is not None else (28,) * spatial_dims
        return ReferenceCNN(spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes, image_size=size)
    if name in _SEGMENTATION_NETWORKS:
        segmentation_builder, multiple_of = _SEGMENTATION_NETWORKS[name]
        multiple = multiple_of(features)
        if image_size is not None and (len(image_size) != spatial_dims or any(int(side) % multiple for side in image_size)):
            raise ValueError(
                f"network {name!r} needs {spatial_dims} spatial sides, each a multiple of {multiple}, got image_size "
                f"{tuple(image_size)}; change the transforms' image_size (patch size)"
            )
        return segmentation_builder(spatial_dims, in_channels, num_classes, features)
    if name not in _MONAI_NETWORKS:
        raise ValueError(f"unknown network {name!r}; valid names: {', '.join(NETWORK_NAMES)}")
    builder, min_side = _MONAI_NETWORKS[name]
    if image_size is not None:
        if len(image_size) != spatial_dims:
            raise ValueError(f"image_size {tuple(image_size)} must have {spatial_dims} entries")
        if min(image_size) < min_side:
            raise ValueError(
                f"network {name!r} needs every spatial side >= {min_side}, got image_size {tuple(image_size)}; "
                "resize the images (transforms config) or choose reference_cnn / a resnet"
            )
    return builder(spatial_dims, in_channels, num_classes)


def check_network_matches(network: Mapping[str, Any], num_classes: int, source: str | os.PathLike) -> None:
    """A network spec must have as many outputs as the datalist ``source`` has classes.

    Raises:
        FedKPerError: naming ``source`` and both class counts.
    """
    if int(network.get("num_classes", -1)) != int(num_classes):
        raise FedKPerError(
            f"{source}: num_classes {num_classes} differs from the job's network num_classes "
            f"{network.get('num_classes')}: edit the job's network args or run `fedkper-monai simulate "
            "--data-root`, which sets them from the datalist"
        )
