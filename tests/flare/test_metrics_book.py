"""RunBook: the round line's personalized summary and backward transfer (docs/design.md, Forgetting: NFR and BwT), by hand."""

from __future__ import annotations

import json
import logging

import pytest

from fedkper_monai.flare.metrics import ROUND_FIELDS, SITE_TRAIN_FIELDS, MetricsFile, RunBook
from fedkper_monai.metrics_schema import UnknownSiteFieldError
from fedkper_monai.schedule import RoundRecord


def _train_metrics(acc: float, balanced: float, nfr: float) -> dict:
    return {"personalized_acc": acc, "personalized_balanced_acc": balanced, "nfr_personalized": nfr, "score": 0.5}


def test_personalized_summary_uses_each_sites_latest_result():
    book = RunBook()
    book.site_train_line(0, "site-1", _train_metrics(0.5, 0.4, 0.1), weight=1.0)
    book.site_train_line(1, "site-2", _train_metrics(0.9, 0.8, 0.0), weight=0.7)
    line = book.site_train_line(2, "site-1", _train_metrics(0.7, 0.6, 0.2), weight=0.3)
    assert line["weight"] == 0.3 and line["task"] == "train" and line["site"] == "site-1"
    round_line = book.round_line(
        2, global_eval=None, bwt=None, bwt_sites=0, site_nfr_global_on_local=[0.1, 0.3], sampled=["site-1"],
        weights={"site-1": 1.0}, dropped={}, seconds=1.5, bytes_sent=10, bytes_received=5,
    )
    assert round_line["mean_personalized_acc"] == pytest.approx(0.8)
    assert round_line["worst_personalized_acc"] == pytest.approx(0.7)
    assert round_line["balanced_personalized_acc"] == pytest.approx(0.7)
    assert round_line["mean_nfr_personalized"] == pytest.approx(0.1)
    assert round_line["mean_nfr_global_on_local"] == pytest.approx(0.2)
    assert round_line["single_site_round"] is True
    assert tuple(round_line) == ("round",) + ROUND_FIELDS


def _close(book: RunBook, round_index: int, sampled: list[str], accuracies: dict[str, float], full: bool = True) -> dict:
    record = _record(round_index, sampled, validate=full)
    return book.close_round(record, {site: _evaluation(acc, 0.0) for site, acc in accuracies.items()}, seconds=1.0)[-1]


def test_backward_transfer_is_the_reference_definition_when_every_round_is_validated():
    # docs/design.md, Forgetting: NFR and BwT, by hand: a, b, c; a is re-sampled in round 2, c only in round 3.
    book = RunBook()
    line = _close(book, 0, ["a"], {"a": 0.5, "b": 0.4, "c": 0.3})
    assert line["bwt"] is None and line["bwt_sites"] == 0  # no baseline from an earlier round yet
    line = _close(book, 1, ["b"], {"a": 0.6, "b": 0.7, "c": 0.2})
    assert line["bwt"] == pytest.approx(0.6 - 0.5) and line["bwt_sites"] == 1  # a against round 0
    # a is sampled again: it counts against its previous baseline (0.5), not 0; c was never sampled.
    line = _close(book, 2, ["a"], {"a": 0.8, "b": 0.5, "c": 0.9})
    assert line["bwt"] == pytest.approx(((0.8 - 0.5) + (0.5 - 0.7)) / 2) and line["bwt_sites"] == 2
    line = _close(book, 3, ["c"], {"a": 0.7, "b": 0.6, "c": 0.1})
    assert line["bwt"] == pytest.approx(((0.7 - 0.8) + (0.6 - 0.7)) / 2) and line["bwt_sites"] == 2
    assert book.baselines == {"a": 0.8, "b": 0.7, "c": 0.1}


def test_backward_transfer_every_third_round_uses_baselines_from_the_round_of_sampling():
    # validate_every 3: rounds 2 and 5 are full validations; in between only the sampled sites evaluate
    # the model their update went into (their exact baseline), and no BwT is reported.
    book = RunBook()
    assert _close(book, 0, ["a"], {"a": 0.5}, full=False)["bwt"] is None
    assert _close(book, 1, ["b"], {"b": 0.6}, full=False)["bwt"] is None
    line = _close(book, 2, ["a"], {"a": 0.7, "b": 0.5, "c": 0.3})
    assert line["bwt"] == pytest.approx(((0.7 - 0.5) + (0.5 - 0.6)) / 2) and line["bwt_sites"] == 2
    assert _close(book, 3, ["c"], {"c": 0.2}, full=False)["bwt"] is None
    assert _close(book, 4, ["b"], {"b": 0.9}, full=False)["bwt"] is None
    line = _close(book, 5, ["a"], {"a": 0.6, "b": 0.8, "c": 0.5})
    assert line["bwt"] == pytest.approx(((0.6 - 0.7) + (0.8 - 0.9) + (0.5 - 0.2)) / 3) and line["bwt_sites"] == 3


def test_a_sampled_site_without_a_figure_loses_its_baseline():
    book = RunBook()
    _close(book, 0, ["a", "b"], {"a": 0.5, "b": 0.4})
    _close(book, 1, ["a"], {"b": 0.6})  # a failed to report: its round-1 baseline is unknown
    line = _close(book, 2, [], {"a": 0.9, "b": 0.6})
    assert line["bwt"] == pytest.approx(0.6 - 0.4) and line["bwt_sites"] == 1


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
    # Nobody has a baseline from an earlier round yet; site-1 takes 0.6 as its baseline.
    assert round_line["bwt"] is None and round_line["bwt_sites"] == 0
    assert round_line["mean_nfr_global_on_local"] == pytest.approx(0.1)
    assert round_line["global_acc"] == 0.7 and round_line["seconds"] == 2.5 and round_line["bytes_sent"] == 100
    assert round_line["mean_personalized_acc"] == pytest.approx(0.9)
    # Round 1 (site-2 sampled): site-1 drops from 0.6 to 0.3; site-2 takes 0.8 as its baseline.
    lines = book.close_round(_record(1, ["site-2"]), {"site-1": _evaluation(0.3, 0.5), "site-2": _evaluation(0.8, 0.0)}, seconds=1.0)
    assert lines[-1]["bwt"] == pytest.approx(-0.3) and lines[-1]["bwt_sites"] == 1


def test_close_round_without_evaluations_reports_no_bwt():
    book = RunBook()
    lines = book.close_round(_record(0, ["site-1"], validate=False), {}, seconds=1.0)
    assert len(lines) == 1 and lines[0]["bwt"] is None and lines[0]["mean_nfr_global_on_local"] is None


def test_train_and_validate_lines_hold_the_schemas_fields_in_order():
    book = RunBook(strict=True)
    sent = {**_train_metrics(0.5, 0.4, 0.1), **_evaluation(0.3, 0.0), "bytes_received": 9, "lr": 0.01}
    train = book.site_train_line(0, "site-1", sent, weight=1.0)
    assert tuple(train) == ("round", "site", "task") + SITE_TRAIN_FIELDS + ("weight", "bytes_received")
    assert "lr" not in train and train["bytes_received"] == 9 and train["num_samples"] is None
    validate = book.site_validate_line(0, "site-1", sent)  # a train result holds its pre-train validation
    assert validate == {"round": 0, "site": "site-1", "task": "validate", "global_on_local_acc": 0.3,
                        "nfr_global_on_local": 0.0, "local_test_size": 10, "negative_flips_global_on_local": None,
                        "positive_flips_global_on_local": None, "unchanged_global_on_local": None}


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
