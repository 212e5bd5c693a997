"""The metrics schema: the recorded metrics.jsonl follows it line by line; unknown site fields are errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedkper_monai import metrics_schema as schema
from fedkper_monai.metrics_schema import UnknownSiteFieldError, check_site_fields, names

GOLDEN = Path(__file__).parent / "system" / "fixtures" / "golden_fedkper_retina_3sites.jsonl"

# What a site sends today (the learner's train and validate results), named here once more on purpose:
# a field added at the site without a schema line fails below.
TRAIN_SENDS = (
    "global_on_local_acc", "global_on_local_balanced_acc", "nfr_global_on_local", "local_test_size",
    "personalized_acc", "personalized_balanced_acc", "nfr_personalized", "train_acc", "score", "num_samples",
    "train_loss", "train_seconds", "lr", "bytes_received",
    "strategy_ce", "strategy_kl", "strategy_beta", "strategy_proximal", "strategy_ntd",
)
VALIDATE_SENDS = ("global_on_local_acc", "global_on_local_balanced_acc", "nfr_global_on_local", "local_test_size")


def test_the_recorded_run_has_exactly_the_schemas_fields_in_its_order():
    lines = [json.loads(text) for text in GOLDEN.read_text().splitlines()]
    assert tuple(lines[0]["run"]) == tuple(schema.HEADER_FIELDS)
    kinds = {"train": 0, "validate": 0, "round": 0}
    for line in lines[1:]:
        if "site" not in line:
            expected = ("round",) + names(schema.ROUND_FIELDS)
            kinds["round"] += 1
        elif line["task"] == "train":
            expected = ("round", "site", "task") + names(schema.SITE_TRAIN_FIELDS) + names(schema.SERVER_TRAIN_FIELDS)
            kinds["train"] += 1
        else:
            expected = ("round", "site", "task") + names(schema.VALIDATE_FIELDS)
            kinds["validate"] += 1
        assert tuple(line) == expected, line
    assert all(kinds.values()), kinds


def test_every_field_a_site_sends_is_written_or_dropped_with_a_reason():
    written = set(names(schema.SITE_TRAIN_FIELDS) + names(schema.SERVER_TRAIN_FIELDS) + names(schema.VALIDATE_FIELDS))
    assert not written & set(schema.DROPPED_SITE_FIELDS)
    assert all(reason.strip() for reason in schema.DROPPED_SITE_FIELDS.values())
    assert set(TRAIN_SENDS) <= written | set(schema.DROPPED_SITE_FIELDS)
    check_site_fields(dict.fromkeys(TRAIN_SENDS, 0.0), "train")
    check_site_fields(dict.fromkeys(VALIDATE_SENDS, 0.0), "validate")
    check_site_fields(dict.fromkeys(TRAIN_SENDS, 0.0))


def test_an_unknown_site_field_is_an_error_naming_it():
    with pytest.raises(UnknownSiteFieldError, match="strategy_new_term"):
        check_site_fields({"personalized_acc": 0.5, "strategy_new_term": 1.0}, "train")
    # A validate result carries the global-on-local fields only.
    with pytest.raises(UnknownSiteFieldError, match="personalized_acc"):
        check_site_fields({"global_on_local_acc": 0.5, "personalized_acc": 0.5}, "validate")
    with pytest.raises(ValueError, match="task"):
        check_site_fields({}, "evaluate")


def test_the_report_checks_every_number_field_of_the_schema():
    from fedkper_monai import run_files
    from fedkper_monai.report import runs

    site_numbers = [item.name for item in schema.SITE_TRAIN_FIELDS + schema.SERVER_TRAIN_FIELDS + schema.VALIDATE_FIELDS]
    assert set(site_numbers) <= {name for name, kind in runs._SITE_KINDS.items() if kind == schema.NUMBER}
    assert runs._ROUND_KINDS == {item.name: item.kind for item in schema.ROUND_FIELDS}
    assert run_files.METRICS_FILE is schema.METRICS_FILE  # the report finds runs through run_files
