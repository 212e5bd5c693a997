"""MedMNIST v2 (Yang et al., Scientific Data 2023): the public ``.npz`` files, their checksums and download.

No dependency on the ``medmnist`` package (it pulls in torchvision): the table below holds what we need,
the class names and the MD5 of each file on MedMNIST's Zenodo record. ChestMNIST is left out (multi-label).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from fedkper_monai.errors import DataError

__all__ = ["MEDMNIST", "MEDMNIST_BASE_URL", "MedMNISTInfo", "default_cache_dir", "download_medmnist", "medmnist_filename"]

#: MedMNIST v2 files on Zenodo (record 10519652).
MEDMNIST_BASE_URL = "https://zenodo.org/records/10519652/files"


@dataclass(frozen=True)
class MedMNISTInfo:
    """One MedMNIST data set: 2D or 3D, class names (index = label), MD5 per image size."""

    spatial_dims: int
    class_names: list[str]
    md5: dict[int, str]


_ORGANS_2D = [
    "bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right",
    "liver", "lung-left", "lung-right", "pancreas", "spleen",
]

MEDMNIST: dict[str, MedMNISTInfo] = {
    "pathmnist": MedMNISTInfo(2, ['adipose', 'background', 'debris', 'lymphocytes', 'mucus', 'smooth muscle', 'normal colon mucosa', 'cancer-associated stroma', 'colorectal adenocarcinoma epithelium'], {28: 'a8b06965200029087d5bd730944a56c1', 64: '55aa9c1e0525abe5a6b9d8343a507616', 128: 'ac42d08fb904d92c244187169d1fd1d9', 224: '2c51a510bcdc9cf8ddb2af93af1eadec'}),
    "dermamnist": MedMNISTInfo(2, ['actinic keratoses and intraepithelial carcinoma', 'basal cell carcinoma', 'benign keratosis-like lesions', 'dermatofibroma', 'melanoma', 'melanocytic nevi', 'vascular lesions'], {28: '0744692d530f8e62ec473284d019b0c7', 64: 'b70a2f5635c6199aeaa28c31d7202e1f', 128: '2defd784463fa5243564e855ed717de1', 224: '8974907d8e169bef5f5b96bc506ae45d'}),
    "octmnist": MedMNISTInfo(2, ['choroidal neovascularization', 'diabetic macular edema', 'drusen', 'normal'], {28: 'c68d92d5b585d8d81f7112f81e2d0842', 64: 'e229e9440236b774d9f0dfef9d07bdaf', 128: '0a97e76651ace45c5d943ee3f65b63ae', 224: 'abc493b6d529d5de7569faaef2773ba3'}),
    "pneumoniamnist": MedMNISTInfo(2, ['normal', 'pneumonia'], {28: '28209eda62fecd6e6a2d98b1501bb15f', 64: '8f4eceb4ccffa70c672198ea285246c6', 128: '05b46931834c231683c68f40c47b2971', 224: 'd6a3c71de1b945ea11211b03746c1fe1'}),
    "retinamnist": MedMNISTInfo(2, ['0', '1', '2', '3', '4'], {28: 'bd4c0672f1bba3e3a89f0e4e876791e4', 64: 'afda852cc34dcda56f86ad2b2457dbcc', 128: 'e48e916a24454daf90583d4e6efb1a18', 224: 'eae7e3b6f3fcbda4ae613ebdcbe35348'}),
    "breastmnist": MedMNISTInfo(2, ['malignant', 'normal, benign'], {28: '750601b1f35ba3300ea97c75c52ff8f6', 64: '742edef2a1fd1524b2efff4bd7ba9364', 128: '363e4b3f8d712e9b5de15470a2aaadf1', 224: 'b56378a6eefa9fed602bb16d192d4c8b'}),
    "bloodmnist": MedMNISTInfo(2, ['basophil', 'eosinophil', 'erythroblast', 'immature granulocytes', 'lymphocyte', 'monocyte', 'neutrophil', 'platelet'], {28: '7053d0359d879ad8a5505303e11de1dc', 64: '2b94928a2ae4916078ca51e05b6b800b', 128: 'adace1e0ed228fccda1f39692059dd4c', 224: 'b718ff6835fcbdb22ba9eacccd7b2601'}),
    "tissuemnist": MedMNISTInfo(2, ['collecting duct, connecting tubule', 'distal convoluted tubule', 'glomerular endothelial cells', 'interstitial endothelial cells', 'leukocytes', 'podocytes', 'proximal tubule segments', 'thick ascending limb'], {28: 'ebe78ee8b05294063de985d821c1c34b', 64: '123ece2eba09d0aa5d698fda57103344', 128: '61b955355d7425a89687b06cca3ce0c2', 224: 'b077128c4a949f0a4eb01517f9037b9c'}),
    "organamnist": MedMNISTInfo(2, _ORGANS_2D, {28: '68e3f8846a6bd62f0c9bf841c0d9eacc', 64: '2dcccc29b88e6da5a01161ef20cda288', 128: 'eeae80d0a227a8d099027e1b3cfd3b60', 224: '50747347e05c87dd3aaf92c49f9f3170'}),
    "organcmnist": MedMNISTInfo(2, _ORGANS_2D, {28: 'b9ceb9546e10131b32923c5bbeaea2b1', 64: '3ce34a8724ea6f548e6db4744d03b6a9', 128: '773c1f009daa3fe5d9a2a201b2a7ed94', 224: '050f5e875dc056f6768abf94ec9995d1'}),
    "organsmnist": MedMNISTInfo(2, _ORGANS_2D, {28: '9ab87b696fb54e2a387ebe992d6ed5f1', 64: '53a6d115339d874c25e309a994ff46d3', 128: 'ded0c5fa01a95dc4978b956f613e9b8e', 224: 'b354719e553fbbb2513d5533f52a4cb1'}),
    "organmnist3d": MedMNISTInfo(3, ['liver', 'kidney-right', 'kidney-left', 'femur-right', 'femur-left', 'bladder', 'heart', 'lung-right', 'lung-left', 'spleen', 'pancreas'], {28: 'a0c5a1ff56af4f155c46d46fbb45a2fe', 64: '58a2205adf14a9d0a189cb06dc78bf10'}),
    "nodulemnist3d": MedMNISTInfo(3, ['benign', 'malignant'], {28: '8755a7e9e05a4d9ce80a24c3e7a256f3', 64: 'c47c5b7d457bf6332200d2ea6d64ecd8'}),
    "adrenalmnist3d": MedMNISTInfo(3, ['normal', 'hyperplasia'], {28: 'bbd3c5a5576322bc4cdfea780653b1ce', 64: '17721accfe9fb005146a47d33bc54b2f'}),
    "fracturemnist3d": MedMNISTInfo(3, ['buckle rib fracture', 'nondisplaced rib fracture', 'displaced rib fracture'], {28: '6aa7b0143a6b42da40027a9dda61302f', 64: 'f01d7e6316aedf4210da0da5b7437b42'}),
    "vesselmnist3d": MedMNISTInfo(3, ['vessel', 'aneurysm'], {28: 'b41fd4f7e7e2feedddb201585ecafa1b', 64: '6bb274a8846e1097066dcd64e2c4520f'}),
    "synapsemnist3d": MedMNISTInfo(3, ['inhibitory synapse', 'excitatory synapse'], {28: '1235b78a3cd6280881dd7850a78eadb6', 64: '43bd14ebf3af9d3dd072446fedc14d5e'}),
}


def medmnist_filename(flag: str, size: int = 28) -> str:
    """File name on Zenodo: ``bloodmnist.npz`` for 28, ``bloodmnist_64.npz`` for larger sizes."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def default_cache_dir() -> Path:
    """Where downloads are kept: ``$FEDKPER_CACHE_DIR`` or ``~/.cache/fedkper_monai``, subfolder ``medmnist``."""
    base = os.environ.get("FEDKPER_CACHE_DIR") or Path.home() / ".cache" / "fedkper_monai"
    return Path(base).expanduser() / "medmnist"


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_medmnist(
    flag: str,
    size: int = 28,
    *,
    cache_dir: str | os.PathLike | None = None,
    mirror: str | None = None,
    progress: bool = True,
    timeout_s: float = 60.0,
) -> Path:
    """Download one MedMNIST ``.npz`` (or reuse a verified copy in the cache) and check its MD5.

    Args:
        flag: data set name, e.g. ``"bloodmnist"`` (see :data:`MEDMNIST`).
        size: 28, 64, 128 or 224 (3D sets: 28 or 64).
        cache_dir: download folder; default :func:`default_cache_dir`.
        mirror: base URL to use instead of Zenodo (``https://``, ``http://`` or ``file://``), for sites that
            keep an internal mirror.
        progress: show a tqdm progress bar.
        timeout_s: network timeout per read.

    Returns:
        path of the verified file.

    Raises:
        DataError: unknown flag or size, offline / unreachable server, or a checksum mismatch.
    """
    name = flag.lower()
    if name not in MEDMNIST:
        raise DataError(flag, f"unknown MedMNIST data set; known: {', '.join(sorted(MEDMNIST))}", field="flag")
    info = MEDMNIST[name]
    if size not in info.md5:
        raise DataError(flag, f"size {size} is not published; available: {sorted(info.md5)}", field="size")
    filename = medmnist_filename(name, size)
    expected = info.md5[size]
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = folder / filename
    if target.is_file() and _md5(target) == expected:
        return target
    url = f"{(mirror or MEDMNIST_BASE_URL).rstrip('/')}/{filename}"
    if url.startswith(MEDMNIST_BASE_URL):
        url += "?download=1"
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=folder)
    try:
        from tqdm.auto import tqdm

        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=filename, disable=not progress) as bar:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
                        bar.update(len(block))
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            raise DataError(
                url,
                f"cannot download ({error}). Offline? Download {filename} by hand (MD5 {expected}) and pass "
                f"--npz PATH, or use --mirror",
                field="flag",
            ) from None
        actual = _md5(Path(tmp_name))
        if actual != expected:
            raise DataError(url, f"checksum mismatch: MD5 {actual}, expected {expected} (file not kept)", field="md5")
        os.replace(tmp_name, target)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return target
