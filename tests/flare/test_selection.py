"""Model selection on validation (schedule.BestSelection) and how the round lines carry it (flare.metrics.RunBook)."""

from __future__ import annotations

from fedkper_monai.flare.metrics import ROUND_FIELDS, RunBook
from fedkper_monai.schedule import BestSelection, RoundRecord


def _record(round_index: int, val: float | None) -> RoundRecord:
    record = RoundRecord(round=round_index, started=0.0, sampled=["site-1"], weights={"site-1": 1.0}, dropped={},
                         bytes_sent=10, bytes_received=5, validate=True)
    record.global_eval = {"accuracy": 0.5, "val_accuracy": val}
    return record


def test_the_best_round_is_the_highest_score_earliest_on_ties_and_none_never_selects():
    selection = BestSelection()
    sequence = [None, 0.40, 0.52, 0.51, 0.52, float("nan"), 0.60, None, 0.55]
    new_best = [selection.update(r, score) for r, score in enumerate(sequence)]
    assert new_best == [False, True, True, False, False, False, True, False, False]
    assert (selection.round, selection.score) == (6, 0.60)


def test_round_lines_name_val_acc_and_the_best_round_so_far():
    book = RunBook(strict=True)
    vals = [0.30, 0.45, 0.45, 0.40, 0.50]
    rounds = [book.close_round(_record(r, v), {"site-1": {"global_on_local_acc": 0.5, "nfr_global_on_local": 0.0,
                                                           "local_test_size": 4}}, seconds=1.0)[-1] for r, v in enumerate(vals)]
    assert {"val_acc", "best_val_round"} <= set(ROUND_FIELDS)
    assert [line["val_acc"] for line in rounds] == vals
    # The controller keeps a round's model exactly when best_val_round == round: rounds 0, 1 and 4 here.
    assert [line["best_val_round"] for line in rounds] == [0, 1, 1, 1, 4]
    assert [line["round"] for line in rounds if line["best_val_round"] == line["round"]] == [0, 1, 4]


def test_without_a_validation_list_both_fields_are_null():
    book = RunBook()
    line = book.close_round(_record(0, None), {}, seconds=1.0)[-1]
    assert line["val_acc"] is None and line["best_val_round"] is None


def test_a_resumed_book_continues_the_same_selection():
    book = RunBook()
    for r, v in enumerate([0.3, 0.6, 0.5]):
        book.close_round(_record(r, v), {}, seconds=1.0)
    resumed = RunBook()
    resumed.load_state_dict(book.state_dict())
    assert (resumed.selection.round, resumed.selection.score) == (1, 0.6)
    # A later round below the stopped run's best does not take over; one above does.
    assert resumed.close_round(_record(3, 0.55), {}, seconds=1.0)[-1]["best_val_round"] == 1
    assert resumed.close_round(_record(4, 0.65), {}, seconds=1.0)[-1]["best_val_round"] == 4
    # A checkpoint written before selection existed has none: nothing selected yet.
    old = RunBook()
    old.load_state_dict({"personalized": {}, "baselines": {}})
    assert old.selection.round is None
    assert old.close_round(_record(0, 0.2), {}, seconds=1.0)[-1]["best_val_round"] == 0
