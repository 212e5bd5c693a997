"""A site operator's protections of what leaves the site, set with ``fedkper-monai site-config``.

Three kinds, all the site's own (a job cannot switch them off):

- ``score_epsilon``: Laplace noise on the sent score (:func:`~fedkper_monai.algorithm.weighting.noisy_score`);
  the smaller of the site's and the job's epsilon applies.
- ``share_decimals``: every accuracy, Dice and flip rate the site sends is rounded to that many decimals
  (:func:`fedkper_monai.flare.messages.round_shared`).
- FLARE's own privacy filters on the train result, in FLARE's ``local/privacy.json`` (a default scope whose
  ``task_result_filters`` FLARE applies to every result this site sends): ``ExcludeVars`` (named weights are
  left out) and ``PercentilePrivacy`` (only the largest changes are sent, clipped to ``gamma``). Both act on
  a weight *difference*, so a site with either sends its update as ``DIFF`` (trained - received); the
  ``send_diff`` choice in ``fedkper_site.json`` says so to the site executor.

FLARE reads ``privacy.json`` when a real client (provisioned or POC) starts a job; its simulator does not
apply site scopes (its client run manager sets no scope object), so there the filters never run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedkper_monai.errors import DataError
from fedkper_monai.io import atomic_write_json

__all__ = ["SCOPE_NAME", "PRIVACY_FILE", "FILTER_CLASSES", "SitePrivacy", "write_privacy_policy", "add_privacy_arguments",
           "privacy_from_args", "check_privacy_values"]

PRIVACY_FILE = "privacy.json"  # FLARE's WorkspaceConstants.PRIVACY_CONFIG
SCOPE_NAME = "fedkper_site"
# The exact FLARE classes site-config writes (both are on FLARE's default component allow-list).
FILTER_CLASSES = {
    "exclude_vars": "nvflare.app_common.filters.exclude_vars.ExcludeVars",
    "percentile": "nvflare.app_common.filters.percentile_privacy.PercentilePrivacy",
}
MAX_DECIMALS = 6


@dataclass(frozen=True)
class SitePrivacy:
    """The protections one site chose (all off by default).

    Args:
        score_epsilon: epsilon of the Laplace noise on the sent score (> 0); ``None``: exact score.
        share_decimals: decimals of every shared accuracy/Dice/flip rate (0-6); ``None``: full precision.
        exclude_vars: weight names FLARE's ``ExcludeVars`` leaves out of every update (exact names).
        percentile: FLARE's ``PercentilePrivacy``: changes whose magnitude is below this percentile (0-100)
            are sent as 0; ``None``: no such filter.
        gamma: with ``percentile``, every sent change is clipped to [-gamma, gamma] (> 0).
    """

    score_epsilon: float | None = None
    share_decimals: int | None = None
    exclude_vars: tuple[str, ...] = ()
    percentile: float | None = None
    gamma: float = 0.01

    def check(self, where: str | Path) -> None:
        """DataError naming the option when a value is out of range."""
        check_privacy_values({"score_epsilon": self.score_epsilon, "share_decimals": self.share_decimals}, where)
        if self.percentile is not None and not 0 <= self.percentile <= 100:
            raise DataError(where, f"must be in [0, 100], got {self.percentile}", field="percentile")
        if not (isinstance(self.gamma, (int, float)) and math.isfinite(self.gamma) and self.gamma > 0):
            raise DataError(where, f"must be a number > 0, got {self.gamma!r}", field="gamma")
        if any(not name or not isinstance(name, str) for name in self.exclude_vars):
            raise DataError(where, "must be non-empty weight names", field="exclude_vars")

    def result_filters(self) -> list[dict[str, Any]]:
        """FLARE component specs of the result filters (empty: no ``privacy.json`` needed)."""
        filters = []
        if self.exclude_vars:
            filters.append({"path": FILTER_CLASSES["exclude_vars"], "args": {"exclude_vars": list(self.exclude_vars)}})
        if self.percentile is not None:
            filters.append({"path": FILTER_CLASSES["percentile"], "args": {"percentile": self.percentile, "gamma": self.gamma}})
        return filters

    def site_values(self) -> dict[str, Any]:
        """The keys ``fedkper_site.json`` holds for these choices (only those that are set)."""
        values: dict[str, Any] = {}
        if self.score_epsilon is not None:
            values["score_epsilon"] = float(self.score_epsilon)
        if self.share_decimals is not None:
            values["share_decimals"] = int(self.share_decimals)
        if self.result_filters():
            values["send_diff"] = True
        return values


def check_privacy_values(values: dict[str, Any], path: str | Path) -> None:
    """DataError naming the field when ``score_epsilon``/``share_decimals``/``send_diff`` in ``values`` is wrong."""
    epsilon = values.get("score_epsilon")
    if epsilon is not None and (isinstance(epsilon, bool) or not isinstance(epsilon, (int, float))
                                or not math.isfinite(epsilon) or epsilon <= 0):
        raise DataError(path, f"must be a number > 0 or null, got {epsilon!r}", field="score_epsilon")
    decimals = values.get("share_decimals")
    if decimals is not None and (isinstance(decimals, bool) or not isinstance(decimals, int) or not 0 <= decimals <= MAX_DECIMALS):
        raise DataError(path, f"must be an integer 0-{MAX_DECIMALS} or null, got {decimals!r}", field="share_decimals")
    if not isinstance(values.get("send_diff", False), bool):
        raise DataError(path, "must be true or false", field="send_diff")


def write_privacy_policy(local_dir: Path, privacy: SitePrivacy) -> Path | None:
    """Write (or remove) this site's scope in FLARE's ``local/privacy.json``; returns the file when written.

    The file is FLARE's: one scope, :data:`SCOPE_NAME`, made the default so every job without a ``scope``
    in its meta gets it. A ``privacy.json`` that holds other scopes is the site's own policy and is not
    touched (DataError: add the filters there by hand).
    """
    path = local_dir / PRIVACY_FILE
    if path.exists():
        try:
            existing = json.loads(path.read_text())
            scopes = [scope.get("name") for scope in existing.get("scopes", [])]
        except (OSError, ValueError, AttributeError, TypeError) as error:
            raise DataError(path, f"not a FLARE privacy policy ({error}); fix or remove it") from None
        if any(name != SCOPE_NAME for name in scopes):
            raise DataError(path, f"holds the site's own scopes {scopes}; add the filters to it by hand", field="scopes")
    filters = privacy.result_filters()
    if not filters:
        path.unlink(missing_ok=True)
        return None
    policy = {"scopes": [{"name": SCOPE_NAME, "task_result_filters": filters}], "default_scope": SCOPE_NAME}
    return atomic_write_json(path, policy)


def add_privacy_arguments(parser: Any) -> None:
    """``site-config``'s privacy options (argparse)."""
    group = parser.add_argument_group("what leaves this site (README: Real sites)")
    group.add_argument("--score-epsilon", type=float, help="send the score with Laplace noise of this epsilon (> 0)")
    group.add_argument("--share-decimals", type=int, help=f"round every shared accuracy, Dice and flip rate (0-{MAX_DECIMALS})")
    group.add_argument("--exclude-vars", nargs="+", default=(), metavar="NAME",
                       help="weights never sent (FLARE ExcludeVars; the update goes as a difference)")
    group.add_argument("--percentile-privacy", type=float, metavar="PERCENTILE",
                       help="FLARE PercentilePrivacy: send only changes above this percentile (0-100), as a difference")
    group.add_argument("--percentile-gamma", type=float, default=0.01, help="with --percentile-privacy: clip each change to +-gamma")


def privacy_from_args(args: Any) -> SitePrivacy:
    """The :class:`SitePrivacy` of parsed ``site-config`` arguments."""
    return SitePrivacy(score_epsilon=args.score_epsilon, share_decimals=args.share_decimals,
                       exclude_vars=tuple(args.exclude_vars or ()), percentile=args.percentile_privacy, gamma=args.percentile_gamma)
