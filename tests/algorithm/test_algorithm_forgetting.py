"""Flip tracking (NFR, per-class forgetting), its saved state, and backward transfer."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from fedkper_monai.algorithm import FlipResult, FlipTracker, backward_transfer

LABELS = {"a": 0, "b": 0, "c": 1, "d": 1, "e": 2, "f": 2}


def evaluate(tracker: FlipTracker, outcome: dict[str, bool]) -> FlipResult:
    ids = list(outcome)
    return tracker.update(ids, [outcome[i] for i in ids], [LABELS[i] for i in ids])


def test_flips_over_three_evaluations_in_shuffled_order():
    tracker = FlipTracker(num_classes=4)  # class 3 never appears: its forgetting stays 0.0

    # 1st: nothing seen yet, so every correct sample (a, b, d) is a positive flip.
    first = evaluate(tracker, {"a": True, "b": True, "c": False, "d": True, "e": False})
    assert (first.negative_flips, first.positive_flips, first.unchanged, first.num_evaluated) == (0, 3, 2, 5)
    assert first.nfr == 0.0
    assert first.per_class_forgetting == [0.0, 0.0, 0.0, 0.0]

    # 2nd, another order: a T->F (class 0) and d T->F (class 1) forgotten; c F->T; b, e unchanged.
    second = evaluate(tracker, {"e": False, "c": True, "a": False, "d": False, "b": True})
    assert (second.negative_flips, second.positive_flips, second.unchanged, second.num_evaluated) == (2, 1, 2, 5)
    assert second.nfr == pytest.approx(2 / 5)
    # class 0: a forgotten of {a, b}; class 1: d forgotten of {c, d}; class 2: e not forgotten.
    assert second.per_class_forgetting == pytest.approx([0.5, 0.5, 0.0, 0.0])

    # 3rd, a subset plus a new sample f: d F->T, a F->T, f unseen->T; b T->F forgotten.
    third = evaluate(tracker, {"d": True, "b": False, "f": True, "a": True})
    assert (third.negative_flips, third.positive_flips, third.unchanged, third.num_evaluated) == (1, 3, 0, 4)
    assert third.nfr == pytest.approx(0.25)
    assert third.per_class_forgetting == pytest.approx([0.5, 0.0, 0.0, 0.0])
    assert len(tracker) == 6

    # c was last seen right (2nd evaluation) and is kept in memory while absent: now wrong -> forgotten.
    fourth = evaluate(tracker, {"c": False})
    assert fourth.negative_flips == 1 and fourth.per_class_forgetting == [0.0, 1.0, 0.0, 0.0]


def test_order_does_not_matter():
    outcome_1 = {"a": True, "b": True, "c": True, "d": False, "e": True}
    outcome_2 = {"a": False, "b": True, "c": False, "d": True, "e": False}
    forward, backward = FlipTracker(3), FlipTracker(3)
    evaluate(forward, outcome_1)
    evaluate(backward, dict(reversed(list(outcome_1.items()))))
    assert evaluate(forward, outcome_2) == evaluate(backward, dict(reversed(list(outcome_2.items()))))


def test_state_round_trips_through_json_and_keeps_int_ids():
    tracker = FlipTracker(num_classes=3)
    tracker.update([0, 1, 2, 3], [True, True, False, True], [0, 1, 2, 1])
    tracker.update(["slice-7", 4], [True, False], [2, 0])
    text = json.dumps(tracker.state_dict())

    restored = FlipTracker(num_classes=3)
    restored.load_state_dict(json.loads(text))
    assert len(restored) == len(tracker) == 6
    assert restored.state_dict() == tracker.state_dict()
    # A restarted site continues: int ids must still match int ids after JSON.
    ids, correct, labels = [3, 1, "slice-7", 0], [False, False, False, True], [1, 1, 2, 0]
    expected = tracker.update(ids, correct, labels)
    got = restored.update(ids, correct, labels)
    assert got == expected
    assert got.negative_flips == 3


def test_tensor_and_numpy_inputs():
    tracker = FlipTracker(num_classes=2)
    tracker.update(torch.tensor([10, 11, 12]), torch.tensor([True, True, False]), torch.tensor([0, 1, 1]))
    result = tracker.update(np.array([12, 11, 10]), np.array([True, False, True]), np.array([1, 1, 0]))
    assert (result.negative_flips, result.positive_flips, result.unchanged) == (1, 1, 1)
    assert result.per_class_forgetting == pytest.approx([0.0, 0.5])
    assert json.loads(json.dumps(tracker.state_dict()))["samples"][0] == [10, True]


def test_empty_evaluation():
    result = FlipTracker(2).update([], [], [])
    assert result == FlipResult(0, 0, 0, 0, 0.0, [0.0, 0.0])
    assert result.as_dict()["nfr"] == 0.0


def test_result_is_frozen():
    result = FlipTracker(1).update(["x"], [True], [0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.nfr = 1.0  # type: ignore[misc]


def test_invalid_updates_leave_memory_unchanged():
    tracker = FlipTracker(num_classes=2)
    tracker.update(["a"], [True], [0])
    with pytest.raises(ValueError, match="differ in length"):
        tracker.update(["a", "b"], [True], [0, 1])
    with pytest.raises(ValueError, match="'b' appears twice"):
        tracker.update(["b", "a", "b"], [False, False, False], [0, 0, 0])
    with pytest.raises(ValueError, match="label 2"):
        tracker.update(["a"], [False], [2])
    with pytest.raises(ValueError, match="sample id"):
        tracker.update([1.5], [False], [0])
    assert tracker.state_dict()["samples"] == [["a", True]]


def test_invalid_construction_and_state():
    with pytest.raises(ValueError, match="num_classes"):
        FlipTracker(0)
    tracker = FlipTracker(2)
    with pytest.raises(ValueError, match="num_classes=3"):
        tracker.load_state_dict({"num_classes": 3, "samples": []})
    with pytest.raises(ValueError, match=r"\[id, bool\]"):
        tracker.load_state_dict({"num_classes": 2, "samples": [["a", 1]]})
    with pytest.raises(ValueError, match="'samples'"):
        tracker.load_state_dict({"num_classes": 2})


def test_backward_transfer_hand_values():
    current = {"site-1": 0.5, "site-2": 0.9, "site-3": 0.1}
    past = {"site-1": 0.7, "site-2": 0.8}
    # ((0.5 - 0.7) + (0.9 - 0.8)) / 2 = -0.05; site-3 was never sampled and is ignored.
    assert backward_transfer(current, past) == pytest.approx(-0.05, abs=1e-12)
    assert backward_transfer({"site-1": 0.8}, {"site-1": 0.6}) == pytest.approx(0.2, abs=1e-12)
    assert backward_transfer(current, {}) == 0.0


def test_backward_transfer_names_a_missing_site():
    with pytest.raises(ValueError, match="site-9"):
        backward_transfer({"site-1": 0.5}, {"site-1": 0.4, "site-9": 0.3})
