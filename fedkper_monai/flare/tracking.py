"""The server's round in its log, and its scalars as FLARE experiment-tracking events (recorded by a
``TBAnalyticsReceiver``)."""

from __future__ import annotations

import math
from typing import Any, Mapping

from nvflare.apis.analytix import ANALYTIC_EVENT_TYPE, AnalyticsDataType, LogWriterName
from nvflare.apis.utils.analytix_utils import create_analytic_dxo, send_analytic_dxo

__all__ = ["ROUND_SCALARS", "round_summary", "send_round_scalars"]

# The round line's fields sent as scalars (tag ``global/<field>``).
ROUND_SCALARS = ("global_acc", "mean_personalized_acc", "worst_personalized_acc", "global_nfr", "bwt", "seconds")


def send_round_scalars(component: Any, fl_ctx: Any, line: Mapping[str, Any]) -> None:
    """Send each finite :data:`ROUND_SCALARS` field of a round line as a local analytics event of ``component``."""
    for key in ROUND_SCALARS:
        value = line.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            dxo = create_analytic_dxo(tag=f"global/{key}", value=float(value), data_type=AnalyticsDataType.SCALAR,
                                      writer=LogWriterName.TORCH_TB, global_step=int(line["round"]))
            send_analytic_dxo(component, dxo=dxo, fl_ctx=fl_ctx, event_type=ANALYTIC_EVENT_TYPE)


def round_summary(line: Mapping[str, Any]) -> str:
    """The server log's line for a round: its figures (3 decimals) and seconds."""
    figures = ", ".join(f"{key} {line[key]:.3f}" for key in ROUND_SCALARS[:-1] if isinstance(line.get(key), float))
    return f"round {line['round']}: {figures}; {line['seconds']:.1f} s"
