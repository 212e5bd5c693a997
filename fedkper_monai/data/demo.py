"""Built-in demo data: a SYNTHETIC 8-class image set generated locally, for the demo job when no data is given.

It is not medical data. It exists so that ``fedkper-monai`` can run end to end with no download. The images
are 28x28 grayscale PNGs of noisy shapes and textures (disk, ring, square, cross, horizontal stripes,
vertical stripes, triangle, checkerboard) with random size, position, contrast, background gradient and
Gaussian noise: learnable, but not trivially (small faint shapes in heavy noise are hard). It is written in
the same on-disk format as imported data (``site-N.json``, ``global_test.json``, ``global_val.json``,
``summary.*``, ``images/``), partitioned with the same Dirichlet label skew.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from fedkper_monai.errors import DataError

__all__ = ["DEMO_CLASS_NAMES", "DEMO_MARKER", "ensure_demo_data", "generate_demo_arrays"]

DEMO_CLASS_NAMES = ["disk", "ring", "square", "cross", "h-stripes", "v-stripes", "triangle", "checker"]
#: File whose presence marks a complete demo folder (written last, inside the staging folder).
DEMO_MARKER = ".fedkper_demo_complete.json"
_SPLIT_SIZES = {"train": 2400, "val": 400, "test": 800}
_SIZE = 28


def _shape_masks(label: int, radius: np.ndarray, cy: np.ndarray, cx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 28, 28) float masks in [0, 1] of class ``label`` for n samples."""
    n = radius.size
    yy, xx = np.mgrid[0:_SIZE, 0:_SIZE].astype(np.float32)
    dy = yy[None] - cy[:, None, None]
    dx = xx[None] - cx[:, None, None]
    r = radius[:, None, None]
    dist = np.sqrt(dy**2 + dx**2)
    inside_box = (np.abs(dy) <= r) & (np.abs(dx) <= r)
    period = rng.uniform(3.0, 5.0, size=(n, 1, 1)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1)).astype(np.float32)
    if label == 0:  # disk
        mask = dist <= r
    elif label == 1:  # ring
        mask = (dist <= r) & (dist >= 0.55 * r)
    elif label == 2:  # square
        mask = inside_box
    elif label == 3:  # cross
        arm = 0.3 * r
        mask = ((np.abs(dy) <= arm) & (np.abs(dx) <= r)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= r))
    elif label == 4:  # horizontal stripes
        mask = inside_box & (np.sin(2 * np.pi * dy / period + phase) > 0)
    elif label == 5:  # vertical stripes
        mask = inside_box & (np.sin(2 * np.pi * dx / period + phase) > 0)
    elif label == 6:  # triangle pointing up
        mask = (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    else:  # checkerboard
        cell = np.maximum(np.round(period / 1.5), 2)
        mask = inside_box & (((np.floor(dy / cell) + np.floor(dx / cell)) % 2) == 0)
    return mask.astype(np.float32)


def generate_demo_arrays(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The synthetic set as MedMNIST-layout arrays: ``{split: (uint8 (N, 28, 28), int64 (N,))}``.

    Classes are balanced per split; deterministic under ``seed``.
    """
    rng = np.random.default_rng(seed)
    out = {}
    num_classes = len(DEMO_CLASS_NAMES)
    for split, total in _SPLIT_SIZES.items():
        labels = rng.permutation(np.arange(total) % num_classes)
        images = np.empty((total, _SIZE, _SIZE), dtype=np.float32)
        for label in range(num_classes):
            members = np.flatnonzero(labels == label)
            n = members.size
            radius = rng.uniform(4.0, 9.0, size=n).astype(np.float32)
            cy = rng.uniform(radius, _SIZE - 1 - radius).astype(np.float32)
            cx = rng.uniform(radius, _SIZE - 1 - radius).astype(np.float32)
            masks = _shape_masks(label, radius, cy, cx, rng)
            background = rng.uniform(0.1, 0.5, size=(n, 1, 1))
            gradient = rng.normal(0, 0.01, size=(n, 2, 1, 1))
            yy, xx = np.mgrid[0:_SIZE, 0:_SIZE]
            base = background + gradient[:, 0] * (yy - _SIZE / 2) + gradient[:, 1] * (xx - _SIZE / 2)
            contrast = rng.uniform(0.15, 0.5, size=(n, 1, 1)) * rng.choice([-1.0, 1.0], size=(n, 1, 1))
            noise = rng.normal(0, rng.uniform(0.05, 0.15, size=(n, 1, 1)), size=(n, _SIZE, _SIZE))
            images[members] = base + contrast * masks + noise
        out[split] = (np.clip(images * 255.0, 0, 255).astype(np.uint8), labels.astype(np.int64))
    return out


def _is_complete(root: Path) -> dict | None:
    marker = root / DEMO_MARKER
    if not marker.is_file():
        return None
    return json.loads(marker.read_text(encoding="utf-8"))


def ensure_demo_data(
    root: str | os.PathLike, *, num_sites: int = 4, seed: int = 0, alpha: float = 0.5, progress: bool = False
) -> Path:
    """Make sure the synthetic demo federation exists under ``root``; return ``root``.

    Idempotent and safe when several site processes call it at once on the same ``root``: each builds in
    its own staging folder beside ``root`` and renames it into place; the first rename wins and the others
    discard their copy. A complete folder carries :data:`DEMO_MARKER` (written before the rename), so a
    folder without it is never mistaken for demo data.

    Args:
        root: output folder (site-1.json ... site-N.json, global_test.json, global_val.json, images/).
        num_sites: number of sites.
        seed: seed of the images and of the partition.
        alpha: Dirichlet concentration of the label skew.
        progress: show progress bars.

    The partition and local splits take the other :class:`~fedkper_monai.data.import_settings.ImportSettings`
    defaults (Dirichlet, ``min_samples=10``, ``local_test_fraction=0.2``), as every importer does.

    Raises:
        DataError: ``root`` exists with other content, or holds demo data made with other settings.
    """
    from fedkper_monai.data.federation import plan_federation, write_federation
    from fedkper_monai.data.import_settings import ImportSettings
    from fedkper_monai.data.sources.npz import array_catalog

    target = Path(root).expanduser().absolute()
    settings = {"num_sites": num_sites, "seed": seed, "alpha": alpha, "version": 1}

    def reuse() -> Path | None:
        found = _is_complete(target)
        if found is None:
            return None
        if found.get("settings") != settings:
            raise DataError(
                target / DEMO_MARKER,
                f"demo data here was made with {found.get('settings')}, not {settings}; use another folder",
                field="settings",
            )
        return target

    if reuse() is not None:
        return target
    if target.exists() and not target.is_dir():
        raise DataError(target, "exists and is not a folder", field="root")
    if target.is_dir() and any(target.iterdir()):
        raise DataError(target, "folder exists, is not empty and holds no complete demo data", field="root")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        import_settings = ImportSettings(num_sites=num_sites, alpha=alpha, seed=seed, progress=progress)
        catalog = array_catalog(
            generate_demo_arrays(seed), class_names=DEMO_CLASS_NAMES, settings=import_settings,
            source="fedkper_monai.data.demo (synthetic)", info={"importer": "demo", "synthetic": True},
        )
        summary = write_federation(staging, catalog, plan_federation(catalog, import_settings), import_settings)
        (staging / DEMO_MARKER).write_text(json.dumps({"settings": settings, "num_train": sum(
            s["num_train"] for s in summary["sites"].values())}), encoding="utf-8")
        try:
            os.rename(staging, target)  # atomic; fails if another process already put a non-empty folder there
        except OSError:
            if reuse() is None:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
