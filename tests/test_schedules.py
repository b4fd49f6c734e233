import math

import pytest

from minbert.data.schedules import annealing_alpha, plan_epoch, planned_examples, sampling_weights

SIZES = {"sst": 100, "quora": 400, "sts": 25}


def test_sequential_is_one_pass_of_each_task_in_turn():
    steps = plan_epoch("sequential", SIZES, 32)
    assert planned_examples(steps) == SIZES
    tasks = [next(iter(s)) for s in steps]
    assert tasks == ["sst"] * 4 + ["quora"] * 13 + ["sts"]
    assert all(len(s) == 1 for s in steps)


def test_round_robin_equal_cycles_tasks():
    steps = plan_epoch("round_robin", SIZES, 10, "equal", steps_per_epoch=9)
    assert [next(iter(s)) for s in steps] == ["sst", "quora", "sts"] * 3
    assert planned_examples(steps) == {"sst": 30, "quora": 30, "sts": 30}


def test_round_robin_proportional_counts_and_default_length():
    steps = plan_epoch("round_robin", SIZES, 25, "proportional")
    assert len(steps) == 4 + 16 + 1  # one pass at batch size 25
    counts = planned_examples(steps)
    assert counts == {"sst": 4 * 25, "quora": 16 * 25, "sts": 1 * 25}


def test_interleaved_has_every_task_in_every_step():
    steps = plan_epoch("interleaved", SIZES, 10, "equal", steps_per_epoch=5)
    assert steps == [{"sst": 10, "quora": 10, "sts": 10}] * 5
    prop = plan_epoch("interleaved", SIZES, 35, "proportional")
    assert len(prop) == math.ceil(525 / 105)
    assert prop[0] == {"sst": 20, "quora": 80, "sts": 5}
    assert planned_examples(prop) == {"sst": 100, "quora": 400, "sts": 25}


def test_sqrt_and_annealed_weights():
    w = sampling_weights(SIZES, "sqrt")
    assert w["quora"] / w["sst"] == pytest.approx(2.0)
    assert annealing_alpha(1, 5) == 1.0 and annealing_alpha(5, 5) == pytest.approx(0.2)
    assert sampling_weights(SIZES, "annealed", 1, 3) == pytest.approx(
        sampling_weights(SIZES, "proportional")
    )
    last = sampling_weights(SIZES, "annealed", 3, 3)
    assert last["quora"] / last["sst"] == pytest.approx(4**0.2)
    assert sum(last.values()) == pytest.approx(1.0)


def test_every_task_keeps_at_least_one_row_per_interleaved_step():
    steps = plan_epoch(
        "interleaved", {"big": 100000, "tiny": 1}, 4, "proportional", steps_per_epoch=2
    )
    assert steps[0]["tiny"] == 1


def test_unknown_schedule_and_sampling():
    with pytest.raises(ValueError, match="round_robin"):
        plan_epoch("zigzag", SIZES, 4)
    with pytest.raises(ValueError, match="annealed"):
        sampling_weights(SIZES, "cubic")
