"""A small multi-site 3D tissue-segmentation federation built from the MNI152 template (issue 15 demo).

The source is ONE real T1 MRI template with grey- and white-matter probability maps (ICBM 2009a, 1 mm,
197 x 233 x 189; ``../shared/data/mni152/``), not a patient cohort. From it this module writes NIfTI cases:

- labels: background (0) / grey matter (1) / white matter (2), the arg-max of (1 - gm - wm, gm, wm) after
  2x average pooling to 2 mm;
- cases: cubic crops of the 2 mm volumes; each site draws its crops from its own range of grey-matter share
  (tissue-composition skew: cortex-rich sites to white-matter-rich sites) with its own field of view (crop
  side) and its own intensity profile (gain, gamma, a smooth bias field and noise, as different scanners);
- the global test set: crops from every range with the template's own intensities.

Crops of one template overlap; the numbers measure the pipeline, not generalization to new patients.
The files are written under the output folder; nothing is copied into the repository.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedkper_monai.errors import DataError
from fedkper_monai.io import atomic_write_json

__all__ = ["MNI152_FILES", "prepare_mni152_demo"]

#: The template's T1, grey-matter and white-matter files in ``../shared/data/mni152/``.
MNI152_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
CLASS_NAMES = ["background", "grey_matter", "white_matter"]


@dataclass(frozen=True)
class _SiteProfile:
    crop: int  # crop side in 2 mm voxels (field of view)
    gain: float
    gamma: float
    bias: float  # amplitude of the smooth multiplicative bias field
    noise: float  # Gaussian noise, in units of the 0..255 range


_PROFILES = (
    _SiteProfile(crop=40, gain=1.0, gamma=1.0, bias=0.05, noise=2.0),
    _SiteProfile(crop=44, gain=0.8, gamma=1.3, bias=0.15, noise=4.0),
    _SiteProfile(crop=36, gain=1.15, gamma=0.8, bias=0.10, noise=6.0),
    _SiteProfile(crop=48, gain=0.9, gamma=1.1, bias=0.20, noise=3.0),
)


def _pool2(volume: np.ndarray) -> np.ndarray:
    """2x2x2 average pooling (edges trimmed to even sides)."""
    x, y, z = (side // 2 * 2 for side in volume.shape)
    v = volume[:x, :y, :z].astype(np.float32)
    return v.reshape(x // 2, 2, y // 2, 2, z // 2, 2).mean(axis=(1, 3, 5))


def _load(source: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import nibabel as nib

    arrays = {}
    for key, name in MNI152_FILES.items():
        path = source / name
        if not path.exists():
            raise DataError(path, "MNI152 file not found (expected the three files of ../shared/data/mni152/)", field="--source")
        arrays[key] = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    t1 = _pool2(arrays["t1"])
    gm, wm = _pool2(arrays["gm"]) / 255.0, _pool2(arrays["wm"]) / 255.0
    labels = np.argmax(np.stack([1.0 - gm - wm, gm, wm]), axis=0).astype(np.uint8)
    return t1, labels, np.diag([2.0, 2.0, 2.0, 1.0])


def _candidates(labels: np.ndarray, side: int, rng: np.random.Generator, count: int = 400) -> list[tuple[tuple[int, int, int], float]]:
    """Crop corners with at least 15% brain tissue and their grey-matter share of the tissue."""
    found = []
    limits = [s - side for s in labels.shape]
    for _ in range(count * 4):
        corner = tuple(int(rng.integers(0, limit + 1)) for limit in limits)
        block = labels[corner[0] : corner[0] + side, corner[1] : corner[1] + side, corner[2] : corner[2] + side]
        gm, wm = int((block == 1).sum()), int((block == 2).sum())
        if gm + wm >= 0.15 * block.size and gm and wm:
            found.append((corner, gm / (gm + wm)))
        if len(found) == count:
            break
    return found


def _site_intensity(t1: np.ndarray, profile: _SiteProfile, rng: np.random.Generator) -> np.ndarray:
    grid = np.meshgrid(*(np.linspace(-1, 1, s) for s in t1.shape), indexing="ij")
    direction = rng.normal(size=3)
    bias = 1.0 + profile.bias * np.tanh(sum(d * g for d, g in zip(direction, grid)))
    scaled = 255.0 * (np.clip(t1, 0, 255) / 255.0) ** profile.gamma * profile.gain * bias
    return scaled + rng.normal(0.0, profile.noise, size=t1.shape)


def _write_case(folder: Path, name: str, image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> tuple[str, str]:
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    image_path, label_path = folder / f"{name}_t1.nii.gz", folder / f"{name}_seg.nii.gz"
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(image_path))
    nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), str(label_path))
    return image_path.name, label_path.name


def prepare_mni152_demo(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    num_sites: int = 3,
    cases_per_site: int = 10,
    test_cases_per_site: int = 2,
    global_test_cases: int = 6,
    patch_size: int = 32,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the federation: ``out/site-k.json``, ``out/global_test.json``, NIfTI cases under ``out/cases/``.

    Args:
        source: the folder of the three MNI152 files.
        out: output folder (created; existing files of the same names are replaced).
        num_sites: 2 to 4 sites (one intensity / field-of-view profile each).
        cases_per_site: training cases per site; ``test_cases_per_site`` more form its local test split.
        global_test_cases: cases of the global test set (template intensities, every tissue range).
        patch_size: the training patch side and the datalists' ``image_size`` (a multiple of 8).
        seed: seed of crops, intensities and noise.

    Returns:
        a summary: per site its cases, field of view and mean grey-matter share.
    """
    if not 2 <= num_sites <= len(_PROFILES):
        raise DataError("mni152-demo", f"must be 2 to {len(_PROFILES)}, got {num_sites}", field="--sites")
    if patch_size % 8 or patch_size > min(p.crop for p in _PROFILES[:num_sites]):
        raise DataError("mni152-demo", f"must be a multiple of 8 no larger than every site's crop, got {patch_size}", field="--patch-size")
    rng = np.random.default_rng(seed)
    t1, labels, affine = _load(Path(source).expanduser())
    target = Path(out).expanduser().absolute()
    target.mkdir(parents=True, exist_ok=True)
    common = {"num_classes": 3, "class_names": CLASS_NAMES, "spatial_dims": 3, "image_size": [patch_size] * 3, "task": "segmentation"}
    summary: dict[str, Any] = {"source": str(Path(source).absolute()), "note": "one template, not a patient cohort", "sites": {}}
    for index in range(num_sites):
        profile = _PROFILES[index]
        candidates = sorted(_candidates(labels, profile.crop, rng), key=lambda item: item[1])
        # Site k draws from the k-th of num_sites ranges of grey-matter share (composition skew).
        width = len(candidates) // num_sites
        pool = candidates[index * width : (index + 1) * width]
        picks = rng.choice(len(pool), size=cases_per_site + test_cases_per_site, replace=False)
        intensity = _site_intensity(t1, profile, rng)
        name = f"site-{index + 1}"
        entries = [_case(target, name, j, pool[p][0], profile.crop, intensity, labels, affine) for j, p in enumerate(picks)]
        atomic_write_json(target / f"{name}.json", {**common, "training": entries[:cases_per_site], "test": entries[cases_per_site:]})
        summary["sites"][name] = {
            "training_cases": cases_per_site,
            "test_cases": test_cases_per_site,
            "crop_side_mm": profile.crop * 2,
            "mean_grey_matter_share": round(float(np.mean([pool[p][1] for p in picks])), 3),
        }
    side = max(p.crop for p in _PROFILES[:num_sites])
    pool = _candidates(labels, side, rng)
    picks = rng.choice(len(pool), size=global_test_cases, replace=False)
    test = [_case(target, "global", j, pool[p][0], side, t1, labels, affine) for j, p in enumerate(picks)]
    atomic_write_json(target / "global_test.json", {**common, "test": test})
    atomic_write_json(target / "summary.json", summary)
    return summary


def _case(target: Path, site: str, index: int, corner: tuple[int, int, int], side: int, intensity: np.ndarray, labels: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    window = tuple(slice(c, c + side) for c in corner)
    case_affine = affine.copy()
    case_affine[:3, 3] = [2.0 * c for c in corner]
    label = labels[window]
    image_name, label_name = _write_case(target / "cases" / site, f"{site}-{index:02d}", intensity[window], label, case_affine)
    counts = np.bincount(label.ravel(), minlength=3)
    return {
        "image": f"cases/{site}/{image_name}",
        "label": f"cases/{site}/{label_name}",
        "id": f"{site}-{index:02d}",
        "class_voxels": [int(c) for c in counts],
    }
