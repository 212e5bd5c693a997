"""The settings of turning a data set into a federation, shared by every importer, the CLI and the demo data."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from fedkper_monai.data.sources.headers import MAX_IMAGE_VALUES, MIN_IMAGE_SIDE
from fedkper_monai.errors import DataError

__all__ = ["FileImportOptions", "ImportSettings", "check_site_name"]

# What FLARE accepts as a participant name, and what is safe as a file name: letters, digits, "-", "_", ".".
_SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_site_name(name: str, source: str | os.PathLike, field: str) -> None:
    """Refuse a site name that FLARE or a file system would not take; the error names ``field``."""
    if not isinstance(name, str) or not _SITE_NAME.fullmatch(name) or name.startswith("holdout-") or name.endswith(".json"):
        raise DataError(
            source, f"site name {name!r} must be letters, digits, '-', '_' or '.' (not holdout-*, no .json)", field=field
        )

_FRACTIONS = ("local_test_fraction", "global_test_fraction", "global_val_fraction")


@dataclass(frozen=True)
class ImportSettings:
    """How to turn a data set into a federation: the settings every importer and the demo data share.

    The fields are the flags of ``fedkper-monai prepare`` (``num_sites`` is ``--sites``, the others are
    spelled alike: ``local_test_fraction`` is ``--local-test-fraction``).

    Attributes:
        num_sites: sites of the Dirichlet/IID partition (a manifest's ``site`` column replaces it).
        alpha: Dirichlet concentration; small = strong label skew.
        seed: seed of the global carve, the partition and the local splits (site k uses ``seed + k``).
        partition: ``"dirichlet"`` or ``"iid"``.
        min_samples: minimum training samples per site.
        local_test_fraction: each site's stratified local test share, in [0, 1).
        global_test_fraction, global_val_fraction: stratified global shares, in [0, 1), carved when the
            source gives no split (class folders, manifests; a MedMNIST file has its own).
        image_size: task size after transforms (default: the images' common size; file importers only).
        spatial_dims: 2 or 3 (default: from the images).
        channels: 1 or 3: images that mix channel counts are each converted to it (file importers; recorded in
            the datalists as ``channels``); without it mixed channel counts are refused.
        holdout_sites: of the partition's sites, this many (a seeded choice) never train: they are written as
            ``holdout-1.json ...`` and the server scores the global model on all their samples (unseen sites).
        site_names: a manifest's ``site`` value -> the FLARE site name of its datalist (default: the value
            itself, so ``hospital-a`` becomes ``hospital-a.json``).
        copy: copy the images under ``out/images`` instead of referencing them in place (file importers only).
        max_image_values: largest image accepted by its header, in values (width x height [x depth] x channels;
            default :data:`~fedkper_monai.data.sources.headers.MAX_IMAGE_VALUES`, 2**28); larger ones are refused
            before decoding.
        min_image_side: shortest image side accepted, in pixels (default
            :data:`~fedkper_monai.data.sources.headers.MIN_IMAGE_SIDE`, 8).
        overwrite: replace a non-empty ``out``.
        progress: show progress bars.

    Example:
        >>> ImportSettings(num_sites=4, alpha=0.5).replace(seed=3).seed
        3
    """

    num_sites: int | None = None
    alpha: float = 0.1
    seed: int = 0
    partition: str = "dirichlet"
    min_samples: int = 10
    local_test_fraction: float = 0.2
    global_test_fraction: float = 0.2
    global_val_fraction: float = 0.1
    image_size: Sequence[int] | None = None
    spatial_dims: int | None = None
    channels: int | None = None
    holdout_sites: int = 0
    site_names: Mapping[str, str] | None = None
    copy: bool = False
    max_image_values: int = MAX_IMAGE_VALUES
    min_image_side: int = MIN_IMAGE_SIDE
    overwrite: bool = False
    progress: bool = True

    def replace(self, **changes: Any) -> "ImportSettings":
        """A copy with ``changes`` (field names; an unknown name is a ``TypeError``)."""
        return dataclasses.replace(self, **changes) if changes else self

    @classmethod
    def resolve(cls, settings: "ImportSettings | None", options: Mapping[str, Any]) -> "ImportSettings":
        """``settings`` (default: the defaults) with the keyword ``options`` of an importer call applied."""
        return (settings or cls()).replace(**options)

    def check(self, source: str | os.PathLike) -> None:
        """Refuse shares outside [0, 1) before any work; the error names the field and ``source``."""
        for name in _FRACTIONS:
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise DataError(source, f"must be in [0, 1), got {value}", field=name)
        if self.channels not in (None, 1, 3):
            raise DataError(source, f"must be 1 or 3, got {self.channels}", field="channels")
        if isinstance(self.holdout_sites, bool) or not isinstance(self.holdout_sites, int) or self.holdout_sites < 0:
            raise DataError(source, f"must be a whole number >= 0, got {self.holdout_sites!r}", field="holdout_sites")
        for name in ("max_image_values", "min_image_side"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(source, f"must be a whole number >= 1, got {value!r}", field=name)
        for name in (self.site_names or {}).values():
            check_site_name(name, source, field="site_names")


#: Former name of :class:`ImportSettings`, when only the folder and manifest importers shared it.
FileImportOptions = ImportSettings
