"""Task timeouts and failed-site lines (issue 11 item 3), without FLARE."""

from __future__ import annotations

import json

import pytest

from fedkper_monai.flare.failures import SiteFailures, build_failure_lines
from fedkper_monai.report.runs import load_run


def test_timeout_is_finite_and_sized_from_the_slowest_answer():
    failures = SiteFailures(None, first_timeout=1800, min_timeout=60, factor=5)
    assert failures.start_round(started=0.0) == 1800  # nobody answered yet: the first-task timeout
    failures.slowest = 30.1
    assert failures.start_round() == 151  # 5 x 30.1 s, whole seconds up
    failures.slowest = 2.0
    assert failures.start_round() == 60  # never below the minimum
    assert SiteFailures(7.5, 1800, 60, 5).start_round() == 8  # a fixed timeout wins


def test_close_round_names_each_silent_or_failed_site():
    failures = SiteFailures(None, 100, 60, 5)
    failures.start_round()
    failures.failed("site-3", "the site's task ended with EXECUTION_EXCEPTION")
    failed = failures.close_round(["site-1", "site-2", "site-3"], ["site-4"], {"site-1": {}}, {})
    assert failed == {
        "train": {
            "site-2": "no answer within the task timeout of 100 s (site stopped, unreachable or too slow)",
            "site-3": "the site's task ended with EXECUTION_EXCEPTION",
        },
        "validate": {"site-4": "no answer within the task timeout of 100 s (site stopped, unreachable or too slow)"},
    }
    failures.start_round()  # errors are per broadcast
    assert failures.close_round(["site-3"], [], {}, {})["train"]["site-3"].startswith("no answer")


def test_failed_lines_load_in_the_report(tmp_path):
    lines = build_failure_lines(3, {"train": {"site-2": "timeout"}, "validate": {"site-4": "error"}})
    assert lines == [
        {"round": 3, "site": "site-2", "task": "train", "status": "failed", "reason": "timeout", "weight": 0.0},
        {"round": 2, "site": "site-4", "task": "validate", "status": "failed", "reason": "error"},
    ]
    records = [{"run": {"algorithm": "fedkper"}}, *lines, {"round": 3, "global_acc": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    run = load_run(tmp_path)
    assert [row["status"] for row in run.site_rows] == ["failed", "failed"]


def test_controller_refuses_a_zero_minimum():
    from fedkper_monai.flare.controller import FedKPerController

    with pytest.raises(ValueError, match="min_responses"):
        FedKPerController(min_responses=0)
    assert FedKPerController().failures.timeout() == 1800
