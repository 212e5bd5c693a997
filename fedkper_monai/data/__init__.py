"""Medical image data layer: datalists, importers, site partitions, MONAI transforms and datasets.

Typical use at a site::

    from fedkper_monai.data import load_datalist, build_transforms, make_dataset, make_loader
    datalist = load_datalist("data/retina/site-1.json")
    train_tf = build_transforms("classification_2d", image_size=datalist.image_size, augment=False)
    train_ds = make_dataset(datalist.training, train_tf, cache="memory")
    loader = make_loader(train_ds, batch_size=12, shuffle=True, seed=0)   # batches: image, label, id
"""

from fedkper_monai.data.datalist import LIST_KEYS, Datalist, class_counts, load_datalist, write_datalist
from fedkper_monai.data.partition import (
    PartitionError,
    dirichlet_partition,
    iid_partition,
    natural_partition,
    stratified_local_split,
)

__all__ = [
    "LIST_KEYS",
    "Datalist",
    "FileImportOptions",
    "ImportSettings",
    "PartitionError",
    "build_transforms",
    "class_counts",
    "dirichlet_partition",
    "ensure_demo_data",
    "iid_partition",
    "import_folders",
    "import_manifest",
    "import_medmnist",
    "is_deterministic",
    "load_datalist",
    "make_dataset",
    "make_loader",
    "natural_partition",
    "resolve_transforms_config",
    "stratified_local_split",
    "write_datalist",
]

# MONAI and torch load lazily: the datalist and partition helpers (and the CLI) do not need them.
_LAZY = {
    "build_transforms": "fedkper_monai.data.pipeline",
    "is_deterministic": "fedkper_monai.data.pipeline",
    "make_dataset": "fedkper_monai.data.pipeline",
    "make_loader": "fedkper_monai.data.pipeline",
    "resolve_transforms_config": "fedkper_monai.data.pipeline",
    "ensure_demo_data": "fedkper_monai.data.demo",
    "FileImportOptions": "fedkper_monai.data.import_settings",
    "ImportSettings": "fedkper_monai.data.import_settings",
    "import_folders": "fedkper_monai.data.sources.folders",
    "import_manifest": "fedkper_monai.data.sources.manifest",
    "import_medmnist": "fedkper_monai.data.sources.npz",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fedkper_monai.data' has no attribute {name!r}")
