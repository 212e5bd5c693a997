"""``fedkper-monai bundle export``: a run's global or personalized model as a self-contained MONAI bundle.

The bundle runs with MONAI alone (no import of this package)::

    python -m monai.bundle run --config_file B/configs/inference.json --bundle_root B \\
        --dataset_dir IMAGES --output_file predictions.csv
    python -m monai.bundle verify_net_in_out network_def --meta_file B/configs/metadata.json \\
        --config_file B/configs/inference.json

Layout: ``configs/metadata.json`` (versions, network data format, class names, the FedKPer run it came from),
``configs/inference.json``, ``models/model.pt`` (the state dict), ``LICENSE``, ``docs/README.md``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fedkper_monai.bundle.netconfig import BUNDLE_IMPORTS, check_equivalent, check_state_dict, network_config
from fedkper_monai.bundle.preprocessing import IMAGE_SUFFIXES, inference_preprocessing
from fedkper_monai.bundle.runs import ModelSource, locate_model
from fedkper_monai.errors import FedKPerError
from fedkper_monai.io import atomic_directory

__all__ = ["export_bundle", "inference_config", "BUNDLE_VERSION"]

BUNDLE_VERSION = "0.1.0"
_SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json"

# The run step of inference.json: load the weights, predict every image in order, write one CSV row each.
_RUN = [
    "$@network.load_state_dict(@checkpoint)",
    "$@network.eval()",
    "$torch.set_grad_enabled(False)",
    "$pathlib.Path(@output_file).absolute().parent.mkdir(parents=True, exist_ok=True)",
    "$(lambda handle: (csv.writer(handle).writerows(@csv_rows), handle.close()))(open(@output_file, 'w', newline=''))",
    "$print('wrote', len(@datalist), 'predictions to', @output_file)",
]


def inference_config(source: ModelSource) -> dict[str, Any]:
    """The ``configs/inference.json`` of a model: data, preprocessing, network, run (no import of this package)."""
    network = network_config(source.network)
    config: dict[str, Any] = {
        "imports": ["$import csv", "$import pathlib", *BUNDLE_IMPORTS],
        "bundle_root": ".",
        "dataset_dir": "images",
        "output_file": "predictions.csv",
        "batch_size": 64,
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "class_names": list(source.class_names),
        "image_suffixes": list(IMAGE_SUFFIXES),
        "datalist": "$[{'image': str(p)} for p in sorted(pathlib.Path(@dataset_dir).rglob('*')) "
        "if p.is_file() and p.name.lower().endswith(tuple(@image_suffixes))]",
    }
    config.update(inference_preprocessing(source.transforms, source.network.get("image_size")))
    config.update(
        {
            "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
            "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": "@batch_size", "shuffle": False, "num_workers": 0},
            **network,
            "network": "$@network_def.to(@device)",
            "checkpoint": "$torch.load(pathlib.Path(@bundle_root) / 'models' / 'model.pt', map_location=@device, weights_only=True)",
            "probabilities": "$torch.cat([torch.softmax(@network(batch['image'].to(@device)).float(), dim=1).cpu() "
            "for batch in @dataloader]) if @datalist else torch.zeros(0, len(@class_names))",
            "csv_rows": "$[['image', 'predicted_index', 'predicted_class', *['prob_' + name for name in @class_names]]] + "
            "[[entry['image'], int(p.argmax()), @class_names[int(p.argmax())], *[f'{v:.8g}' for v in p.tolist()]] "
            "for entry, p in zip(@datalist, @probabilities)]",
            "run": list(_RUN),
        }
    )
    return config


def _metadata(source: ModelSource, weights_sha256: str) -> dict[str, Any]:
    import monai
    import numpy
    import torch

    spec = source.network
    names = list(source.class_names)
    image_size = [int(s) for s in spec.get("image_size") or []]
    who = "the global model" if source.role == "global" else f"site {source.site}'s personalized model"
    return {
        "schema": _SCHEMA,
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: f"exported by fedkper-monai from {who}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {},
        "name": f"fedkper_{source.role}_{source.site or 'server'}_{spec['name']}",
        "task": f"{len(names)}-class image classification ({spec['spatial_dims']}D)",
        "description": f"{who} of a FedKPer federated run ({source.run.get('algorithm', 'fedkper')}), network {spec['name']}",
        "authors": "exported by fedkper-monai",
        "copyright": "see LICENSE",
        "data_type": "image files (PNG/JPEG/BMP/TIFF, NIfTI, DICOM)",
        "image_classes": f"{spec['in_channels']}-channel image scaled to [-1, 1], resized to {image_size}",
        "label_classes": {str(i): name for i, name in enumerate(names)},
        "pred_classes": {str(i): name for i, name in enumerate(names)},
        "intended_use": "research; not validated for clinical use",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "any",
                    "num_channels": int(spec["in_channels"]),
                    "spatial_shape": image_size,
                    "dtype": "float32",
                    "value_range": [-1, 1],
                    "is_patch_data": False,
                    "channel_def": {str(i): f"channel {i}" for i in range(int(spec["in_channels"]))},
                }
            },
            "outputs": {
                "pred": {
                    "type": "logits",
                    "format": "classes",
                    "num_channels": len(names),
                    "spatial_shape": [1],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": False,
                    "channel_def": {str(i): name for i, name in enumerate(names)},
                }
            },
        },
        "fedkper": _provenance(source, weights_sha256),
    }


def _provenance(source: ModelSource, weights_sha256: str) -> dict[str, Any]:
    """Which run, role and weights a bundle came from (``metadata.json`` ``fedkper``)."""
    return {
        "role": source.role,
        "site": source.site,
        # Which of the run's models: the latest, or the one best on validation (docs/models-and-bundles.md).
        "selection": "best on validation" if source.best else "latest",
        "network": dict(source.network),
        "transforms": source.transforms,
        "run_dir": str(Path(source.run_dir).absolute()),
        "run": dict(source.run),
        "weights_file": str(Path(source.weights_path).absolute()),
        "weights_sha256": weights_sha256,
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
    }


def _readme(source: ModelSource) -> str:
    who = "the global model" if source.role == "global" else f"site `{source.site}`'s personalized model"
    names = ", ".join(f"{i}: {name}" for i, name in enumerate(source.class_names))
    return f"""# FedKPer {source.role} model ({source.network['name']})

{who.capitalize()} of the FedKPer run `{Path(source.run_dir).absolute()}`, exported by `fedkper-monai bundle export`.
Classes: {names}. Input: {source.network['in_channels']}-channel images, resized to
{source.network.get('image_size')} and scaled to [-1, 1] (`configs/inference.json`, `preprocessing`).

## Inference with MONAI alone

```bash
python -m monai.bundle run --config_file configs/inference.json --bundle_root . --dataset_dir IMAGES --output_file predictions.csv
```

Every image under `IMAGES` (PNG, JPEG, BMP, TIFF, NIfTI, DICOM) gets one row: path, predicted index and class,
one softmax probability per class. `--device "\\$torch.device('cpu')"` forces the CPU.

## Check the network

```bash
python -m monai.bundle verify_net_in_out network_def --meta_file configs/metadata.json --config_file configs/inference.json
```

`models/model.pt` is a plain state dict; `network_def` builds the matching network from MONAI/torch classes.
A personalized model was trained on one site's data: it is meant for that site's population.
"""


_LICENSE = """The configuration files of this bundle were generated by fedkper-monai (Apache License 2.0).

The model weights in models/model.pt were trained on the data of the federated sites of the run named in
configs/metadata.json; their use is subject to the terms under which that data was obtained. The model is
provided "as is", without warranty of any kind, and is not a medical device.
"""


def export_bundle(run_dir: str | os.PathLike, out: str | os.PathLike, *, site: str | None = None, overwrite: bool = False,
                  best: bool = False) -> Path:
    """Write the global model (``site=None``) or ``site``'s personalized model of a run as a MONAI bundle: the
    latest, or with ``best`` the one best on validation (:func:`~fedkper_monai.bundle.runs.locate_model`).

    The folder is built aside and moved into place only when complete (nothing half-written is left); the
    network written in config is checked to load the weights and give the same logits as the run's network.

    Raises:
        FedKPerError: the run, the model or its config is missing, the weights do not fit the network, or
            ``out`` exists and ``overwrite`` is False.
    """
    import torch

    source = locate_model(run_dir, site=site, best=best)
    try:
        weights = torch.load(source.weights_path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: name it
        raise FedKPerError(f"{source.weights_path}: cannot read the model: {error}") from None
    if source.network.get("name") == "bundle":
        return _export_into_local_bundle(source, weights, Path(out), overwrite)
    config = inference_config(source)
    check_equivalent(source.network, {key: config[key] for key in ("network_blocks", "network_def") if key in config}, weights)
    buffer = io.BytesIO()
    torch.save(dict(weights), buffer)
    payload = buffer.getvalue()
    with atomic_directory(out, overwrite=overwrite) as staging:
        (staging / "configs").mkdir()
        (staging / "models").mkdir()
        (staging / "docs").mkdir()
        (staging / "models" / "model.pt").write_bytes(payload)
        metadata = _metadata(source, hashlib.sha256(payload).hexdigest())
        (staging / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        (staging / "configs" / "inference.json").write_text(json.dumps(config, indent=2) + "\n")
        (staging / "LICENSE").write_text(_LICENSE)
        (staging / "docs" / "README.md").write_text(_readme(source))
    return Path(out)



def _export_into_local_bundle(source: ModelSource, weights: dict, out: Path, overwrite: bool) -> Path:
    """A run trained from a MONAI bundle: that bundle (``$FEDKPER_BUNDLE_ROOT``) with the run's weights."""
    import shutil

    import torch

    from fedkper_monai.site_bundle import build_bundle_network, local_bundle_root

    root = local_bundle_root()
    spec = {key: value for key, value in source.network.items() if key != "name"}
    check_state_dict(build_bundle_network(**spec), weights, source=str(source.weights_path))
    buffer = io.BytesIO()
    torch.save(dict(weights), buffer)
    with atomic_directory(out, overwrite=overwrite) as staging:
        shutil.copytree(root, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("models", "__pycache__"))
        (staging / "models").mkdir()
        (staging / "models" / "model.pt").write_bytes(buffer.getvalue())
        meta_path = staging / "configs" / "metadata.json"
        metadata = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        metadata["fedkper"] = _provenance(source, hashlib.sha256(buffer.getvalue()).hexdigest())
        meta_path.write_text(json.dumps(metadata, indent=2) + "\n")
    return out
