"""Streaming weighted average: hand values, equality with the direct average, buffers, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedkper_monai.algorithm import WeightedAverager


def _small_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 3))


def test_hand_computed_weighted_average():
    averager = WeightedAverager()
    averager.add({"w": torch.tensor([0.0, 2.0]), "b": torch.tensor(1.0)}, weight=1.0)
    averager.add({"w": torch.tensor([4.0, 6.0]), "b": torch.tensor(5.0)}, weight=3.0)
    out = averager.result()
    # (1 * 0 + 3 * 4) / 4 = 3, (1 * 2 + 3 * 6) / 4 = 5, (1 + 15) / 4 = 4
    assert torch.equal(out["w"], torch.tensor([3.0, 5.0]))
    assert torch.equal(out["b"], torch.tensor(4.0))
    assert list(out) == ["w", "b"]
    assert averager.count == 2
    assert averager.total_weight == 4.0


def test_streaming_equals_direct_average_for_50_random_models():
    generator = torch.Generator().manual_seed(0)
    shapes = {"conv.weight": (8, 3, 3, 3), "conv.bias": (8,), "fc.weight": (10, 32), "fc.bias": (10,)}
    models = [{k: torch.randn(s, generator=generator) * 3 for k, s in shapes.items()} for _ in range(50)]
    weights = torch.rand(50, generator=generator, dtype=torch.float64).tolist()

    averager = WeightedAverager()
    for model, weight in zip(models, weights):
        averager.add(model, weight)
    streamed = averager.result()

    total = sum(weights)
    for key in shapes:
        direct = sum(w / total * m[key].double() for m, w in zip(models, weights))
        assert streamed[key].dtype == torch.float32
        assert torch.allclose(streamed[key].double(), direct, rtol=0, atol=1e-6), key


def test_real_network_state_dicts_keep_keys_dtypes_and_integer_buffers():
    nets = [_small_net(seed) for seed in range(3)]
    for steps, net in zip([10, 20, 40], nets):
        net[1].num_batches_tracked.fill_(steps)
    averager = WeightedAverager()
    for net, weight in zip(nets, [1.0, 1.0, 2.0]):
        averager.add(net.state_dict(), weight)
    out = averager.result()
    reference = nets[0].state_dict()
    assert list(out) == list(reference)
    for key, value in reference.items():
        assert out[key].dtype == value.dtype and out[key].shape == value.shape, key
    # num_batches_tracked: (10 + 20 + 2 * 40) / 4 = 27.5 -> rounded to nearest even 28, stays int64.
    assert out["1.num_batches_tracked"].dtype == torch.int64
    assert out["1.num_batches_tracked"].item() == 28
    # The average loads back into the same architecture.
    _small_net(99).load_state_dict(out)


def test_integer_and_bool_buffers_are_rounded_weighted_averages():
    averager = WeightedAverager()
    averager.add({"steps": torch.tensor(10, dtype=torch.int32), "mask": torch.tensor([True, False, True])}, 1.0)
    averager.add({"steps": torch.tensor(20, dtype=torch.int32), "mask": torch.tensor([False, False, True])}, 2.0)
    out = averager.result()
    # (10 + 2 * 20) / 3 = 16.67 -> 17; mask: weighted majority (1/3, 0, 1) -> (False, False, True).
    assert out["steps"].dtype == torch.int32 and out["steps"].item() == 17
    assert out["mask"].dtype == torch.bool
    assert out["mask"].tolist() == [False, False, True]


def test_output_dtypes_follow_the_inputs():
    averager = WeightedAverager()
    for value in (1.0, 2.0):
        averager.add(
            {
                "half": torch.full((2,), value, dtype=torch.float16),
                "double": torch.full((2,), value, dtype=torch.float64),
                "long": torch.full((2,), int(value) * 3, dtype=torch.int64),
            },
            1.0,
        )
    out = averager.result()
    assert out["half"].dtype == torch.float16 and out["half"].tolist() == [1.5, 1.5]
    assert out["double"].dtype == torch.float64 and out["double"].tolist() == [1.5, 1.5]
    assert out["long"].dtype == torch.int64 and out["long"].tolist() == [4, 4]  # 4.5 -> 4 (ties to even)


def test_numpy_state_dicts_come_back_as_numpy():
    averager = WeightedAverager()
    averager.add({"w": np.array([1.0, 3.0], dtype=np.float32), "n": np.array(4, dtype=np.int64)}, 1.0)
    averager.add({"w": np.array([3.0, 5.0], dtype=np.float32), "n": np.array(8, dtype=np.int64)}, 1.0)
    out = averager.result()
    assert isinstance(out["w"], np.ndarray) and out["w"].dtype == np.float32
    np.testing.assert_array_equal(out["w"], [2.0, 4.0])
    assert isinstance(out["n"], np.ndarray) and out["n"].dtype == np.int64 and out["n"] == 6


def test_inputs_are_not_modified_and_result_can_be_taken_twice():
    first = {"w": torch.tensor([1.0, 2.0])}
    averager = WeightedAverager()
    averager.add(first, 2.0)
    averager.add({"w": torch.tensor([3.0, 4.0])}, 2.0)
    assert torch.equal(first["w"], torch.tensor([1.0, 2.0]))
    assert torch.equal(averager.result()["w"], averager.result()["w"])
    averager.add({"w": torch.tensor([2.0, 3.0])}, 4.0)
    assert torch.equal(averager.result()["w"], torch.tensor([2.0, 3.0]))


def test_float32_accumulators_are_an_option():
    averager = WeightedAverager(accumulate_dtype=torch.float32)
    averager.add({"w": torch.tensor([1.0])}, 1.0)
    averager.add({"w": torch.tensor([2.0])}, 1.0)
    assert averager.result()["w"].item() == 1.5
    with pytest.raises(ValueError, match="accumulate_dtype"):
        WeightedAverager(accumulate_dtype=torch.int64)


def test_shape_mismatch_names_key_and_both_shapes_and_adds_nothing():
    averager = WeightedAverager()
    averager.add({"a": torch.zeros(2), "fc.weight": torch.zeros(3, 4)}, 1.0)
    with pytest.raises(ValueError) as info:
        averager.add({"a": torch.ones(2), "fc.weight": torch.zeros(4, 3)}, 1.0)
    message = str(info.value)
    assert "fc.weight" in message and "(4, 3)" in message and "(3, 4)" in message
    assert averager.count == 1 and averager.total_weight == 1.0
    assert torch.equal(averager.result()["a"], torch.zeros(2))


def test_key_mismatch_names_the_key():
    averager = WeightedAverager()
    averager.add({"a": torch.zeros(2), "b": torch.zeros(1)}, 1.0)
    with pytest.raises(ValueError, match="lacks.*'b'"):
        averager.add({"a": torch.zeros(2)}, 1.0)
    with pytest.raises(ValueError, match="'c'"):
        averager.add({"a": torch.zeros(2), "b": torch.zeros(1), "c": torch.zeros(1)}, 1.0)


def test_result_errors_and_reset():
    averager = WeightedAverager()
    with pytest.raises(ValueError, match="before any model"):
        averager.result()
    averager.add({"w": torch.ones(1)}, 0.0)
    with pytest.raises(ValueError, match="total weight"):
        averager.result()
    averager.reset()
    assert averager.count == 0 and averager.total_weight == 0.0
    averager.add({"w": torch.ones(5)}, 1.0)  # a new first model may have new shapes after reset
    assert averager.result()["w"].shape == (5,)


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf")])
def test_rejects_bad_weights(weight):
    with pytest.raises(ValueError, match="weight"):
        WeightedAverager().add({"w": torch.ones(1)}, weight)


def test_rejects_empty_state_dict_and_non_arrays():
    with pytest.raises(ValueError, match="empty"):
        WeightedAverager().add({}, 1.0)
    with pytest.raises(ValueError, match="w: expected a torch.Tensor"):
        WeightedAverager().add({"w": [1.0, 2.0]}, 1.0)
