"""The server's round schedule (fedkper_monai.schedule), without FLARE or torch."""

from __future__ import annotations

import subprocess
import sys

from fedkper_monai.schedule import RoundRecord, RoundSchedule, sample_sites

SITES = ["site-1", "site-2", "site-3", "site-4"]


def test_schedule_and_metrics_writer_import_without_flare_or_torch():
    code = (
        "import sys\n"
        "import fedkper_monai.schedule, fedkper_monai.metrics_schema, fedkper_monai.flare.metrics\n"
        "print(sorted(name for name in ('nvflare', 'torch') if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def _record(schedule: RoundSchedule, round_index: int, previous: RoundRecord | None, reported: list[str]) -> RoundRecord:
    broadcast = schedule.broadcast(round_index, previous)
    train_metrics = {site: {"bytes_received": 7} for site in reported}
    weights = {site: 1.0 / len(reported) for site in reported}
    return schedule.record(broadcast, started=0.0, weights=weights, dropped={}, payload_bytes=100, train_metrics=train_metrics)


def test_first_round_trains_the_sample_and_validates_nobody():
    schedule = RoundSchedule(SITES, num_rounds=3, sample_fraction=0.5, seed=0)
    broadcast = schedule.broadcast(0, None)
    assert broadcast.sampled == sample_sites(SITES, 0.5, 0, 0) and len(broadcast.sampled) == 2
    assert broadcast.validators == []


def test_the_others_validate_when_the_previous_model_is_due():
    schedule = RoundSchedule(SITES, num_rounds=4, sample_fraction=0.5, seed=0, validate_every=2)
    round_0 = _record(schedule, 0, None, reported=sample_sites(SITES, 0.5, 0, 0))
    assert not round_0.validate  # validated every 2 rounds: round 1's model is the first
    # Between full validations the previous round's sampled sites still evaluate its model (BwT baselines).
    broadcast = schedule.broadcast(1, round_0)
    assert broadcast.validators == [site for site in round_0.sampled if site not in broadcast.sampled]
    round_1 = _record(schedule, 1, round_0, reported=sample_sites(SITES, 0.5, 0, 1))
    assert round_1.validate
    broadcast = schedule.broadcast(2, round_1)
    assert sorted(broadcast.sampled + broadcast.validators) == SITES and not set(broadcast.sampled) & set(broadcast.validators)


def test_record_counts_bytes_and_drops_sampled_sites_without_a_result():
    schedule = RoundSchedule(SITES, num_rounds=2, sample_fraction=1.0, seed=0)
    previous = _record(schedule, 0, None, reported=SITES)
    broadcast = schedule.broadcast(1, previous)
    assert broadcast.sampled == SITES and broadcast.validators == []  # everyone trains, nobody is left to validate
    train_metrics = {"site-1": {"bytes_received": 10}, "site-3": {"bytes_received": 30}}
    record = schedule.record(broadcast, 5.0, {"site-1": 0.25, "site-3": 0.75}, {"site-3": "nan"}, 100, train_metrics)
    assert record.round == 1 and record.started == 5.0 and record.validate  # the last round is always validated
    assert record.bytes_sent == 100 * 4 and record.bytes_received == 40
    assert record.weights == {"site-1": 0.25, "site-3": 0.75, "site-2": 0.0, "site-4": 0.0}
    assert record.dropped == {"site-3": "nan", "site-2": "no result", "site-4": "no result"}


def test_final_broadcast_validates_everyone_when_due_and_counts_its_bytes():
    schedule = RoundSchedule(SITES, num_rounds=1, sample_fraction=0.5, seed=0, validate_every=0)
    last = _record(schedule, 0, None, reported=sample_sites(SITES, 0.5, 0, 0))
    assert last.validate is False and schedule.final_broadcast(last, payload_bytes=100) == []
    assert last.bytes_sent == 200
    last.validate = True
    assert schedule.final_broadcast(last, payload_bytes=100) == SITES and last.bytes_sent == 200 + 400


def test_evaluations_of_the_previous_model_are_everyones_when_validated_else_its_sampled_sites():
    schedule = RoundSchedule(SITES, num_rounds=4, sample_fraction=0.5, seed=0, validate_every=2)
    validations = {"site-2": {"global_on_local_acc": 0.5}, "site-3": {"global_on_local_acc": 0.4}}
    trained = {"site-1": {"global_on_local_acc": 0.7}}
    due = RoundRecord(0, 0.0, ["site-2"], {}, {}, 0, 0, validate=True)
    assert schedule.evaluations(due, validations, trained) == {**validations, **trained}
    due.validate = False
    assert schedule.evaluations(due, validations, trained) == {"site-2": validations["site-2"]}
    off = RoundSchedule(SITES, num_rounds=4, sample_fraction=0.5, seed=0, validate_every=0)
    assert off.evaluations(due, validations, trained) == {}
