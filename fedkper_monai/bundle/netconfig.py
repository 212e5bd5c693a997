"""A network spec as MONAI bundle config (``network_def``) that needs no import of this package.

MONAI networks are written as themselves (``"_target_": "monai.networks.nets.DenseNet121"`` and their
arguments). The paper's reference CNN is this package's class, so a bundle that named it would need
``fedkper_monai`` installed wherever the bundle runs. Instead it is written as the same layers composed from
``torch.nn`` in config: named ``torch.nn.Sequential`` blocks whose state-dict keys are exactly the
``ReferenceCNN``'s (``features.0.weight``, ..., ``classifier.bias``), so the run's state dict loads as it is.
Why not TorchScript: a ``.ts`` file is opaque to a MONAI user (no editable ``network_def``), and
``verify_net_in_out`` and the MONAI FL tools read ``network_def`` from config. :func:`check_equivalent`
proves at export that both networks compute the same logits from the same weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fedkper_monai.errors import FedKPerError

__all__ = ["BUNDLE_IMPORTS", "check_equivalent", "check_state_dict", "instantiate_network", "network_config"]

#: Top-level ``imports`` entry the network config needs (``collections`` names the Sequential blocks).
BUNDLE_IMPORTS = ["$import collections"]

# Torch layers the reference CNN is made of: class -> the constructor arguments read back from an instance.
_LAYER_ARGS: dict[type, tuple[str, ...]] = {
    nn.Conv2d: ("in_channels", "out_channels", "kernel_size", "stride", "padding"),
    nn.Conv3d: ("in_channels", "out_channels", "kernel_size", "stride", "padding"),
    nn.MaxPool2d: ("kernel_size", "stride"),
    nn.MaxPool3d: ("kernel_size", "stride"),
    nn.Linear: ("in_features", "out_features"),
    nn.ReLU: (),
    nn.Flatten: ("start_dim", "end_dim"),
}

_COMPOSE_BLOCKS = (
    "$torch.nn.Sequential(collections.OrderedDict("
    "(name, torch.nn.Sequential(*layers) if isinstance(layers, list) else layers) "
    "for name, layers in @network_blocks.items()))"
)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _layer_config(layer: nn.Module) -> dict[str, Any]:
    args = _LAYER_ARGS.get(type(layer))
    if args is None:
        raise FedKPerError(f"cannot write layer {type(layer).__name__} as bundle config")
    config: dict[str, Any] = {"_target_": f"torch.nn.{type(layer).__name__}"}
    config.update({name: _plain(getattr(layer, name)) for name in args})
    if isinstance(layer, (nn.Conv2d, nn.Conv3d, nn.Linear)):
        config["bias"] = layer.bias is not None
    return config


def _monai_config(spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """``network_def`` of a MONAI network of :func:`~fedkper_monai.training.networks.build_network`."""
    name = str(spec["name"])
    dims, channels, classes = int(spec["spatial_dims"]), int(spec["in_channels"]), int(spec["num_classes"])
    if name.startswith("densenet"):
        target = f"monai.networks.nets.DenseNet{name[len('densenet'):]}"
        return {"_target_": target, "spatial_dims": dims, "in_channels": channels, "out_channels": classes, "pretrained": False}
    if name.startswith("resnet"):
        return {
            "_target_": f"monai.networks.nets.{name}",
            "pretrained": False,
            "spatial_dims": dims,
            "n_input_channels": channels,
            "num_classes": classes,
        }
    if name.startswith("efficientnet-"):
        return {
            "_target_": "monai.networks.nets.EfficientNetBN",
            "model_name": name,
            "pretrained": False,
            "spatial_dims": dims,
            "in_channels": channels,
            "num_classes": classes,
        }
    return None


def network_config(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Bundle config entries that build the network of ``spec``: ``network_def`` (and ``network_blocks``).

    Args:
        spec: a ``build_network`` spec: name, spatial_dims, in_channels, num_classes, image_size.

    Returns:
        entries to merge into a bundle config; the reference CNN also needs :data:`BUNDLE_IMPORTS`.

    Raises:
        FedKPerError: a network name this package does not know.
    """
    from fedkper_monai.training.networks import NETWORK_NAMES, ReferenceCNN, build_network

    if spec.get("name") not in NETWORK_NAMES:
        raise FedKPerError(f"unknown network {spec.get('name')!r}; valid names: {', '.join(NETWORK_NAMES)}")
    monai_config = _monai_config(spec)
    if monai_config is not None:
        return {"network_def": monai_config}
    reference = build_network(**spec)
    assert isinstance(reference, ReferenceCNN)
    blocks: dict[str, Any] = {}
    for name, child in reference.named_children():
        if isinstance(child, nn.Sequential):
            blocks[name] = [_layer_config(layer) for layer in child]
        else:
            blocks[name] = _layer_config(child)
    return {"network_blocks": blocks, "network_def": _COMPOSE_BLOCKS}


def instantiate_network(config: Mapping[str, Any], network_id: str = "network_def") -> nn.Module:
    """Build the network of bundle config entries with MONAI's ``ConfigParser``."""
    from monai.bundle import ConfigParser

    # ConfigParser evaluates the "$import ..." entries of "imports" before the expressions that use them.
    return ConfigParser({"imports": BUNDLE_IMPORTS, **config}).get_parsed_content(network_id)


def check_equivalent(spec: Mapping[str, Any], config: Mapping[str, Any], weights: Mapping[str, torch.Tensor]) -> None:
    """The config's network loads ``weights`` strictly and gives the same logits as ``build_network(**spec)``.

    Raises:
        FedKPerError: naming the first key or shape that differs, or the largest difference of the logits.
    """
    from fedkper_monai.training.networks import build_network

    from_config = instantiate_network(config)
    from_package = build_network(**spec)
    check_state_dict(from_config, weights, source="bundle network_def")
    from_config.load_state_dict(weights)
    from_package.load_state_dict(weights)
    size = spec.get("image_size") or [32] * int(spec["spatial_dims"])
    probe = torch.randn(2, int(spec["in_channels"]), *[int(s) for s in size], generator=torch.Generator().manual_seed(0))
    from_config.eval(), from_package.eval()
    with torch.no_grad():
        difference = (from_config(probe) - from_package(probe)).abs().max().item()
    if difference > 1e-5:
        raise FedKPerError(f"bundle network_def differs from {spec['name']}: logits differ by {difference:.3g}")


def check_state_dict(network: nn.Module, weights: Mapping[str, torch.Tensor], source: str) -> None:
    """``weights`` fit ``network`` key by key and shape by shape.

    Raises:
        FedKPerError: naming ``source``, the first mismatched key and both shapes (or the missing/extra key).
    """
    expected = network.state_dict()
    for key, tensor in expected.items():
        if key not in weights:
            raise FedKPerError(f"{source}: the weights have no {key!r} (network expects shape {tuple(tensor.shape)})")
        shape = tuple(getattr(weights[key], "shape", ()))
        if shape != tuple(tensor.shape):
            raise FedKPerError(
                f"{source}: the network does not match the weights: first mismatched key {key!r}: "
                f"network {tuple(tensor.shape)}, weights {shape}"
            )
    extra = [key for key in weights if key not in expected]
    if extra:
        raise FedKPerError(f"{source}: the weights have key {extra[0]!r} that the network does not have")
