"""Batch inference with a run's model: from a MONAI bundle folder or a state dict (``personalized_model.pt``).

A bundle brings its own preprocessing and ``network_def`` (read with MONAI's ``ConfigParser``, as
``python -m monai.bundle run`` does); a state dict is rebuilt from its run's job config (or an explicit
network spec) with this package's transform pipeline, exactly as the site evaluated it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedkper_monai.bundle.netconfig import check_state_dict
from fedkper_monai.bundle.preprocessing import IMAGE_SUFFIXES
from fedkper_monai.data.sources.headers import check_image_header, limit_pil_decoding
from fedkper_monai.errors import DataError, FedKPerError
from fedkper_monai.io import atomic_write_text

__all__ = ["LoadedModel", "load_model", "load_inputs", "predict", "write_predictions_csv"]


@dataclass
class LoadedModel:
    """A network with its weights, the preprocessing it expects and its class names.

    Attributes:
        network: maps ``(N, in_channels, *image_size)`` to logits ``(N, len(class_names))``.
        preprocessing: maps ``{"image": path}`` to ``{"image": float tensor (C, *spatial)}``.
        class_names: one per output; empty while neither the model nor the data names them (``predict``
            then names them by index).
        in_channels: channels the network takes.
        image_size: spatial size the network takes, or None when any size works.
        source: where it came from (for messages).
        num_classes: the outputs the model says it has (a bundle's class names or its metadata's
            ``network_data_format.outputs.pred.num_channels``, a state dict's network spec); None when it does not say.
    """

    network: nn.Module
    preprocessing: Callable[[dict], Mapping[str, Any]]
    class_names: list[str]
    in_channels: int
    image_size: list[int] | None
    source: str
    num_classes: int | None = None


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FedKPerError(f"{path}: model file not found")
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated or foreign file
        raise FedKPerError(f"{path}: cannot read the model: {error}") from None
    if not isinstance(weights, Mapping):
        raise FedKPerError(f"{path}: not a state dict ({type(weights).__name__})")
    return dict(weights)


def _load_bundle(bundle_dir: Path, class_names: Sequence[str] | None = None, trust: bool = False) -> LoadedModel:
    from monai.bundle import ConfigParser

    from fedkper_monai.bundle.trust import check_bundle_trust

    config_path = bundle_dir / "configs" / "inference.json"
    meta_path = bundle_dir / "configs" / "metadata.json"
    if not config_path.is_file():
        raise FedKPerError(f"{bundle_dir}: not a MONAI bundle (no configs/inference.json)")
    # MONAI runs the config while parsing it (its imports first): refuse one that imports before any of it runs.
    check_bundle_trust([config_path, meta_path], trust=trust)
    weights = _load_weights(bundle_dir / "models" / "model.pt")
    parser = ConfigParser()
    try:
        parser.read_config(str(config_path))
        if meta_path.is_file():
            parser.read_meta(str(meta_path))
        parser["bundle_root"] = str(bundle_dir)
        network = parser.get_parsed_content("network_def")
        preprocessing = parser.get_parsed_content("preprocessing")
    except Exception as error:  # a bundle config is data: report which file failed and why
        raise FedKPerError(f"{config_path}: cannot build the bundle's network or preprocessing: {error}") from None
    check_state_dict(network, weights, source=str(bundle_dir / "models" / "model.pt"))
    network.load_state_dict(weights)
    meta = parser.get("_meta_", {}) or {}
    image_format = (meta.get("network_data_format") or {}).get("inputs", {}).get("image", {})
    own_names, num_classes = _bundle_classes(parser.get("class_names"), meta)
    return LoadedModel(
        network=network,
        preprocessing=preprocessing,
        # A bundle from elsewhere may name no classes: then the datalist's names, else the indices (set by predict).
        class_names=[str(n) for n in own_names or class_names or []],
        in_channels=int(image_format.get("num_channels") or 0),
        image_size=[int(s) for s in image_format.get("spatial_shape") or []] or None,
        source=str(bundle_dir),
        num_classes=num_classes,
    )


def _bundle_classes(config_names: Any, meta: Mapping[str, Any]) -> tuple[list[Any], int | None]:
    """A bundle's own class names (ours: ``class_names`` in the config; MONAI's: ``pred_classes`` in the metadata)
    and how many outputs it says it has (the names, else ``network_data_format.outputs.pred.num_channels``)."""
    names = list(config_names or (meta.get("pred_classes") or {}).values())
    if names:
        return names, len(names)
    outputs = ((meta.get("network_data_format") or {}).get("outputs", {}).get("pred") or {}).get("num_channels")
    # The metadata is its author's data: a count only when it is a positive integer.
    return [], outputs if isinstance(outputs, int) and not isinstance(outputs, bool) and outputs > 0 else None


def _with_dummy_label(pipeline: Callable) -> Callable[[dict], Mapping[str, Any]]:
    # The package's pipelines also convert "label"; unlabelled images get a placeholder there.
    return lambda entry: pipeline({"label": 0, **entry})


def _find_run(weights_path: Path) -> Path | None:
    """The run folder holding ``RUN/<participant>/<job>/<model>.pt``, when the file sits in one."""
    parents = weights_path.absolute().parents
    if len(parents) > 2 and (parents[2] / "server").is_dir():
        return parents[2]
    return None


def load_model(
    model: str | os.PathLike,
    *,
    run_dir: str | os.PathLike | None = None,
    network: Mapping[str, Any] | None = None,
    transforms: str | None = None,
    class_names: Sequence[str] | None = None,
    trust_bundle: bool = False,
) -> LoadedModel:
    """A bundle folder, or a state dict with its run (``run_dir`` or the run it sits in) or a network spec.

    A bundle's config is code that MONAI runs: one whose entries import modules beyond torch, monai and numpy
    (:mod:`~fedkper_monai.bundle.trust`) is refused unless ``trust_bundle`` (``--trust-bundle``).

    Raises:
        FedKPerError: missing ``models/model.pt``, a network that does not match the weights (naming the first
            mismatched key and both shapes), a state dict with neither a run nor a network spec, or an untrusted
            bundle config that imports (naming the file and the entry).
    """
    from fedkper_monai.bundle.runs import locate_model
    from fedkper_monai.data import build_transforms
    from fedkper_monai.training.networks import build_network

    path = Path(model)
    if path.is_dir():
        return _load_bundle(path, class_names, trust=trust_bundle)
    weights = _load_weights(path)
    if network is None:
        run = Path(run_dir) if run_dir is not None else _find_run(path)
        if run is None:
            raise FedKPerError(f"{path}: a state dict needs --run RUN_DIR (the run it came from) or --network SPEC")
        participant = path.absolute().parent.parent.name
        located = locate_model(run, site=None if participant == "server" else participant)
        network, transforms = located.network, transforms or located.transforms
        class_names = located.class_names
    spec = dict(network)
    try:
        net = build_network(**spec)
    except (TypeError, ValueError) as error:
        raise FedKPerError(f"network spec {spec}: {error}") from None
    check_state_dict(net, weights, source=str(path))
    net.load_state_dict(weights)
    pipeline = build_transforms(transforms or "classification_2d", image_size=spec.get("image_size"))
    # Named by its run; else by the caller (the datalist's names) or, at predict, by index.
    names = list(class_names or [])
    return LoadedModel(net, _with_dummy_label(pipeline), names, int(spec["in_channels"]), spec.get("image_size"), str(path),
                       num_classes=int(spec["num_classes"]))


def load_inputs(
    images: str | os.PathLike, split: str = "test", *, num_classes: int | None = None, labels: bool = False
) -> tuple[list[dict], list[str] | None]:
    """Entries ``{"image", "id"[, "label"]}`` from a folder of images or a datalist JSON (its ``split`` list).

    A datalist may be a plain MONAI one: entries without an ``id`` are named by their image path as written,
    and (unless ``labels``) entries without a ``label``, or bare image paths as in MONAI's Decathlon ``test``
    lists, are read too.

    Args:
        images: the folder or the datalist.
        split: the datalist's list to read.
        num_classes: the model's class count (:attr:`LoadedModel.num_classes`): a datalist without
            ``num_classes`` (a plain MONAI datalist) takes it; one whose ``num_classes`` differs is refused.
        labels: every entry must have a label (``evaluate``); a folder of images has none and is refused.

    Returns:
        the entries and the datalist's class names (None for a folder).

    Raises:
        DataError: naming the file and the field (``num_classes`` of a datalist that disagrees with the model).
    """
    from fedkper_monai.data import load_datalist

    path = Path(images)
    if path.is_dir() and labels:
        raise DataError(path, "a folder of images has no labels: give a datalist with a label per image")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(tuple(IMAGE_SUFFIXES)))
        if not files:
            raise DataError(path, f"no image files ({', '.join(IMAGE_SUFFIXES)})")
        return [{"image": str(p), "id": str(p.relative_to(path))} for p in files], None
    datalist = load_datalist(path, num_classes=num_classes, ids_required=False, labels_required=labels)
    entries = datalist.entries(split)
    if not entries:
        raise DataError(path, f"the {split!r} list is empty", field=split)
    return [dict(entry) for entry in entries], list(datalist.class_names)


class _CheckedImages(torch.utils.data.Dataset):
    """Preprocessed images whose load errors and wrong shapes name the file."""

    def __init__(self, entries: Sequence[Mapping[str, Any]], model: LoadedModel) -> None:
        self.entries = entries
        self.model = model

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> torch.Tensor:
        image_path = str(self.entries[index]["image"])
        # Sized from its header first: a small file may decode to gigabytes (the limits prepare applies).
        check_image_header(image_path, source=image_path, field=f"id={self.entries[index].get('id', index)}")
        try:
            image = torch.as_tensor(self.model.preprocessing({"image": image_path})["image"], dtype=torch.float32)
        except FedKPerError:
            raise
        except Exception as error:
            cause = error.__cause__ or error
            raise DataError(image_path, f"cannot load or preprocess image: {type(cause).__name__}: {cause}") from None
        expected_channels, expected_size = self.model.in_channels, self.model.image_size
        if expected_channels and image.shape[0] != expected_channels:
            raise DataError(
                image_path,
                f"image has {image.shape[0]} channel(s) after preprocessing, the model takes {expected_channels} "
                "(set `channels` in the transform config: 1 turns RGB into gray, 3 repeats gray)",
            )
        if expected_size and list(image.shape[1:]) != list(expected_size):
            raise DataError(image_path, f"image size {list(image.shape[1:])} after preprocessing, the model takes {list(expected_size)} (the config does not resize)")
        return torch.as_tensor(image).as_subclass(torch.Tensor)


def predict(
    model: LoadedModel,
    entries: Sequence[Mapping[str, Any]],
    *,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = True,
) -> np.ndarray:
    """Softmax probabilities ``(len(entries), num_classes)`` in the order of ``entries``.

    Raises:
        DataError: an image cannot be read, is above :data:`~fedkper_monai.data.sources.headers.MAX_IMAGE_VALUES`
            or under :data:`~fedkper_monai.data.sources.headers.MIN_IMAGE_SIDE` by its header, or has the wrong
            channels or size for the model (naming the file).
    """
    from tqdm.auto import tqdm

    from fedkper_monai.training.loop import select_device

    target = select_device(device)
    limit_pil_decoding()
    network = model.network.to(target).eval()
    loader = torch.utils.data.DataLoader(_CheckedImages(entries, model), batch_size=batch_size, shuffle=False, num_workers=0)
    chunks = []
    with torch.no_grad():
        for images in tqdm(loader, desc="predict", unit="batch", disable=not progress):
            logits = network(images.to(target)).float()
            if not model.class_names and logits.ndim == 2:
                model.class_names = [str(index) for index in range(logits.shape[1])]
            if logits.ndim != 2 or logits.shape[1] != len(model.class_names):
                raise FedKPerError(f"{model.source}: the network gives logits {tuple(logits.shape)}, expected (N, {len(model.class_names)})")
            chunks.append(torch.softmax(logits, dim=1).cpu())
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, len(model.class_names)), dtype=np.float32)


def write_predictions_csv(path: str | os.PathLike, entries: Sequence[Mapping[str, Any]], probabilities: np.ndarray, class_names: Sequence[str]) -> Path:
    """One row per entry: id, image, predicted_index, predicted_class, prob_<class>..., label (when known)."""
    labelled = any("label" in entry for entry in entries)
    header = ["id", "image", "predicted_index", "predicted_class", *[f"prob_{name}" for name in class_names]]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header + (["label", "label_class"] if labelled else []))
    for entry, row in zip(entries, probabilities):
        index = int(row.argmax())
        line = [entry.get("id", entry["image"]), entry["image"], index, class_names[index], *[f"{v:.8g}" for v in row.tolist()]]
        if labelled:
            label = entry.get("label")
            line += ["", ""] if label is None else [int(label), class_names[int(label)]]
        writer.writerow(line)
    return atomic_write_text(path, buffer.getvalue())


def parse_network_spec(text: str) -> dict[str, Any]:
    """A ``--network`` value: inline JSON or a JSON file."""
    candidate = Path(text)
    try:
        return dict(json.loads(candidate.read_text() if candidate.is_file() else text))
    except (OSError, ValueError, TypeError) as error:
        raise FedKPerError(f"--network {text!r}: not a JSON network spec or file: {error}") from None
