"""RunBook: the round line's personalized summary and backward transfer (DESIGN §2), by hand."""

from __future__ import annotations

import json
import logging

import pytest

from fedkper_monai.flare.metrics import ROUND_FIELDS, SITE_TRAIN_FIELDS, MetricsFile, RoundRecord, RunBook
from fedkper_monai.metrics_schema import UnknownSiteFieldError


def _train_metrics(acc: float, balanced: float, nfr: float) -> dict:
    return {"personalized_acc": acc, "personalized_balanced_acc": balanced, "nfr_personalized": nfr, "score": 0.5}


def test_personalized_summary_uses_each_sites_latest_result():
    book = RunBook()
    book.site_train_line(0, "site-1", _train_metrics(0.5, 0.4, 0.1), weight=1.0)
    book.site_train_line(1, "site-2", _train_metrics(0.9, 0.8, 0.0), weight=0.7)
    line = book.site_train_line(2, "site-1", _train_metrics(0.7, 0.6, 0.2), weight=0.3)
    assert line["weight"] == 0.3 and line["task"] == "train" and line["site"] == "site-1"
    round_line = book.round_line(
        2, global_eval=None, bwt=None, site_nfr_global_on_local=[0.1, 0.3], sampled=["site-1"],
        weights={"site-1": 1.0}, dropped={}, seconds=1.5, bytes_sent=10, bytes_received=5,
    )
    assert round_line["mean_personalized_acc"] == pytest.approx(0.8)
    assert round_line["worst_personalized_acc"] == pytest.approx(0.7)
    assert round_line["balanced_personalized_acc"] == pytest.approx(0.7)
    assert round_line["mean_nfr_personalized"] == pytest.approx(0.1)
    assert round_line["mean_nfr_global_on_local"] == pytest.approx(0.2)
    assert round_line["single_site_round"] is True
    assert tuple(round_line) == ("round",) + ROUND_FIELDS


def test_backward_transfer_against_accuracy_right_after_last_sampling():
    book = RunBook()
    book.mark_sampled(["site-1"])
    # Right after round 0: site-1's reference becomes 0.6; it contributes 0 now.
    assert book.backward_transfer({"site-1": 0.6, "site-2": 0.5}) == pytest.approx(0.0)
    book.mark_sampled(["site-2"])
    # Round 1: site-2's reference is 0.8 (0 now); site-1 dropped from 0.6 to 0.4.
    assert book.backward_transfer({"site-1": 0.4, "site-2": 0.8}) == pytest.approx((-0.2 + 0.0) / 2)
    # Round 2, nobody sampled: site-1 0.6 -> 0.5, site-2 0.8 -> 0.9.
    assert book.backward_transfer({"site-1": 0.5, "site-2": 0.9}) == pytest.approx((-0.1 + 0.1) / 2)


def test_no_reference_yet_gives_none():
    assert RunBook().backward_transfer({"site-1": 0.5}) is None


def test_metrics_file_writes_null_for_nan(tmp_path):
    metrics = MetricsFile(tmp_path / "m.jsonl")
    metrics.append({"round": 0, "global_acc": float("nan")})
    metrics.append({"round": 1, "global_acc": 0.5})
    lines = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert lines == [{"round": 0, "global_acc": None}, {"round": 1, "global_acc": 0.5}]


def _record(round_index: int, sampled: list[str], validate: bool = True) -> RoundRecord:
    return RoundRecord(
        round=round_index, started=0.0, sampled=sampled, weights={s: 1.0 / len(sampled) for s in sampled}, dropped={},
        bytes_sent=100, bytes_received=50, validate=validate, global_eval={"accuracy": 0.7, "nfr": 0.1},
    )


def _evaluation(acc: float, nfr: float) -> dict:
    return {"global_on_local_acc": acc, "nfr_global_on_local": nfr, "local_test_size": 10}


def test_close_round_writes_validate_lines_then_the_round_line():
    book = RunBook()
    book.site_train_line(0, "site-1", _train_metrics(0.9, 0.9, 0.0), weight=1.0)
    # Round 0's model, evaluated during round 1: site-2 by a validate task, site-1 before it trained again.
    lines = book.close_round(_record(0, ["site-1"]), {"site-2": _evaluation(0.5, 0.2), "site-1": _evaluation(0.6, 0.0)}, seconds=2.5)
    assert [(line.get("site"), line.get("task")) for line in lines] == [("site-1", "validate"), ("site-2", "validate"), (None, None)]
    assert all(line["round"] == 0 for line in lines)
    round_line = lines[-1]
    # site-1 was sampled in round 0: this evaluation is its reference, so it contributes 0; site-2 has none yet.
    assert round_line["bwt"] == pytest.approx(0.0)
    assert round_line["mean_nfr_global_on_local"] == pytest.approx(0.1)
    assert round_line["global_acc"] == 0.7 and round_line["seconds"] == 2.5 and round_line["bytes_sent"] == 100
    assert round_line["mean_personalized_acc"] == pytest.approx(0.9)
    # Round 1 (site-2 sampled): site-1 drops from 0.6 to 0.3; site-2 takes 0.8 as its reference.
    lines = book.close_round(_record(1, ["site-2"]), {"site-1": _evaluation(0.3, 0.5), "site-2": _evaluation(0.8, 0.0)}, seconds=1.0)
    assert lines[-1]["bwt"] == pytest.approx((-0.3 + 0.0) / 2)


def test_close_round_without_validation_keeps_the_bwt_reference_pending():
    book = RunBook()
    lines = book.close_round(_record(0, ["site-1"], validate=False), {}, seconds=1.0)
    assert len(lines) == 1 and lines[0]["bwt"] is None and lines[0]["mean_nfr_global_on_local"] is None
    # site-1's reference is set at the first validation after it was sampled.
    lines = book.close_round(_record(1, ["site-2"]), {"site-1": _evaluation(0.4, 0.0), "site-2": _evaluation(0.5, 0.0)}, seconds=1.0)
    assert lines[-1]["bwt"] == pytest.approx(0.0)
    lines = book.close_round(_record(2, ["site-2"]), {"site-1": _evaluation(0.6, 0.0), "site-2": _evaluation(0.5, 0.0)}, seconds=1.0)
    assert lines[-1]["bwt"] == pytest.approx((0.2 + 0.0) / 2)


def test_train_and_validate_lines_hold_the_schemas_fields_in_order():
    book = RunBook(strict=True)
    sent = {**_train_metrics(0.5, 0.4, 0.1), **_evaluation(0.3, 0.0), "bytes_received": 9, "lr": 0.01}
    train = book.site_train_line(0, "site-1", sent, weight=1.0)
    assert tuple(train) == ("round", "site", "task") + SITE_TRAIN_FIELDS + ("weight", "bytes_received")
    assert "lr" not in train and train["bytes_received"] == 9 and train["num_samples"] is None
    validate = book.site_validate_line(0, "site-1", sent)  # a train result holds its pre-train validation
    assert validate == {"round": 0, "site": "site-1", "task": "validate", "global_on_local_acc": 0.3,
                        "nfr_global_on_local": 0.0, "local_test_size": 10}


def test_an_unknown_site_field_raises_when_strict_and_is_logged_once_and_dropped_otherwise(caplog):
    sent = {**_train_metrics(0.5, 0.4, 0.1), "surprise": 1.0}
    with pytest.raises(UnknownSiteFieldError, match="surprise"):
        RunBook(strict=True).site_train_line(0, "site-1", sent, weight=1.0)
    with pytest.raises(UnknownSiteFieldError, match="surprise"):
        RunBook(strict=True).site_validate_line(0, "site-1", {**_evaluation(0.3, 0.0), "surprise": 1.0})
    book = RunBook()
    with caplog.at_level(logging.WARNING, logger="fedkper_monai.flare.metrics"):
        first = book.site_train_line(0, "site-1", sent, weight=1.0)
        book.site_train_line(1, "site-2", sent, weight=1.0)
    assert "surprise" not in first and first == RunBook().site_train_line(0, "site-1", _train_metrics(0.5, 0.4, 0.1), 1.0)
    assert [record.getMessage() for record in caplog.records] == [
        "site-1 sent metrics the schema does not know, not written: ['surprise']"
    ]
