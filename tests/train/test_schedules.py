"""orthocond.train.schedules: CVPR 2020 lr schedules, rescaling, LambdaLR integration."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from orthocond.train.schedules import (
    REFERENCE_EPOCHS,
    SCHEDULES,
    last_decay_epoch,
    lr_lambda,
    make_scheduler,
)


def test_schedule_names():
    assert SCHEDULES == ("multistep", "cosine", "constant", "normal", "fast", "adjusted", "step")
    assert REFERENCE_EPOCHS == {"normal": 100, "fast": 30, "adjusted": 50}


@pytest.mark.parametrize(
    "name, epoch, expected",
    [
        # FORMULAS §8: epochs count from 0, so the first epoch is above the base lr
        ("fast", 0, 0.1 * (53 / 52) ** 11),
        ("fast", 1, 0.1),
        ("fast", 29, 0.1 * (1 - 28 / 52) ** 11),
        ("adjusted", 0, 0.1 * (50 / 49) ** 2),
        ("adjusted", 1, 0.1),
        ("adjusted", 49, 0.1 * (1 - 48 / 49) ** 2),
        ("normal", 0, 0.1),
        ("normal", 29, 0.1),
        ("normal", 30, 0.01),
        ("normal", 59, 0.01),
        ("normal", 60, 0.001),
        ("normal", 99, 1e-4),
    ],
)
def test_paper_values_at_reference_length(name, epoch, expected):
    lr = lr_lambda(name, REFERENCE_EPOCHS[name], base_lr=0.1)(epoch)
    assert lr == pytest.approx(expected, rel=1e-12)


def test_first_epoch_numbers_from_formulas():
    # the two numbers quoted in FORMULAS §8, to 4 digits
    assert round(lr_lambda("fast", 30, base_lr=0.1)(0), 4) == 0.1233
    assert round(lr_lambda("adjusted", 50, base_lr=0.1)(0), 4) == 0.1041
    # without base_lr the callable is the LambdaLR factor
    assert lr_lambda("fast", 30)(0) == pytest.approx((53 / 52) ** 11, rel=1e-12)


def test_rescaling_to_a_budget():
    # e -> e·R/T: normal over 10 epochs decays at 3, 6, 9
    f = lr_lambda("normal", 10)
    assert [f(e) for e in range(10)] == pytest.approx(
        [1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001], rel=1e-12
    )
    # fast over 60 epochs: epoch 2·k reads the 30-epoch formula at k
    f60, f30 = lr_lambda("fast", 60), lr_lambda("fast", 30)
    for k in (0, 1, 7, 29):
        assert f60(2 * k) == pytest.approx(f30(k), rel=1e-12)
    # odd epochs read the formula between two integers: 2k+1 -> k + 0.5
    assert f60(3) == pytest.approx((1 - 0.5 / 52) ** 11, rel=1e-12)
    # adjusted over 25 epochs: epoch e reads e·2
    f25 = lr_lambda("adjusted", 25)
    assert f25(10) == pytest.approx((1 - 19 / 49) ** 2, rel=1e-12)


def test_step_cosine_constant():
    f = lr_lambda("step", 60)  # default milestones 30, 45
    assert [f(e) for e in (0, 29, 30, 44, 45, 59)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01], rel=1e-12
    )
    g = lr_lambda("step", 10, milestones=[2, 7], gamma=0.5)
    assert [g(e) for e in (1, 2, 6, 7)] == pytest.approx([1, 0.5, 0.5, 0.25])
    c = lr_lambda("cosine", 8)
    assert c(0) == 1.0
    assert c(4) == pytest.approx(0.5, abs=1e-15)
    assert c(2) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)), rel=1e-15)
    assert c(8) == pytest.approx(0.0, abs=1e-15) and c(100) == pytest.approx(0.0, abs=1e-15)
    assert lr_lambda("constant", 5, base_lr=0.3)(4) == 0.3


def test_never_negative_past_the_budget():
    f = lr_lambda("fast", 30)
    assert f(30) > 0
    assert f(1000) == 0.0  # base clamped at 0 instead of (negative)^11
    assert lr_lambda("adjusted", 50)(500) == 0.0


def test_per_iteration_index():
    f = lr_lambda("fast", 30, steps_per_epoch=7)
    ref = lr_lambda("fast", 30)
    assert f(0) == f(6) == ref(0)
    assert f(7) == ref(1)
    assert f(7 * 20 + 3) == ref(20)


def test_make_scheduler_epoch_and_state():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = make_scheduler(opt, "adjusted", 50)
    lrs = []
    for _ in range(50):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ref = lr_lambda("adjusted", 50, base_lr=0.1)
    assert lrs == pytest.approx([ref(e) for e in range(50)], rel=1e-12)
    # the schedule travels in the scheduler's state_dict and pickles
    state = sched.state_dict()
    assert state["lr_lambdas"][0]["name"] == "adjusted"
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    sched2 = make_scheduler(opt2, "constant", 5)
    sched2.load_state_dict(state)
    assert sched2.lr_lambdas[0].name == "adjusted" and sched2.lr_lambdas[0].epochs == 50
    f = pickle.loads(pickle.dumps(lr_lambda("normal", 100)))
    assert f(60) == pytest.approx(0.01)


def test_make_scheduler_per_iteration_two_groups():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.05}], lr=0.1)
    sched = make_scheduler(opt, "normal", 10, steps_per_epoch=4)
    for _ in range(12):  # 3 epochs of 4 steps
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.005], rel=1e-12)


def test_last_decay_epoch():
    assert last_decay_epoch("normal", 100) == 90
    assert last_decay_epoch("normal", 10) == 9
    assert last_decay_epoch("step", 60) == 45  # ICCV21 ImageNet: SVD for the epochs 46-60
    assert last_decay_epoch("step", 30, milestones=[10, 20]) == 20
    for name in ("fast", "adjusted", "cosine", "constant"):
        assert last_decay_epoch(name, 30) is None
    assert last_decay_epoch("step", 1) is None


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"name": "linear", "epochs": 10}, ValueError, "name must be one of"),
        ({"name": 3, "epochs": 10}, TypeError, "name must be a str"),
        ({"name": "fast", "epochs": 0}, ValueError, "epochs must be >= 1"),
        ({"name": "fast", "epochs": 2.5}, TypeError, "epochs must be an int"),
        ({"name": "fast", "epochs": 10, "base_lr": -0.1}, ValueError, "base_lr"),
        ({"name": "fast", "epochs": 10, "base_lr": float("nan")}, ValueError, "base_lr"),
        ({"name": "fast", "epochs": 10, "steps_per_epoch": 0}, ValueError, "steps_per_epoch"),
        ({"name": "step", "epochs": 10, "milestones": [5, 3]}, ValueError, "increasing"),
        ({"name": "step", "epochs": 10, "milestones": [11]}, ValueError, r"\[1, epochs=10\]"),
        ({"name": "step", "epochs": 10, "milestones": "5"}, TypeError, "milestones"),
        ({"name": "fast", "epochs": 10, "milestones": [5]}, ValueError, "only apply"),
        ({"name": "step", "epochs": 10, "gamma": 1.5}, ValueError, "gamma"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        lr_lambda(**kwargs)


def test_bad_index_and_optimizer():
    f = lr_lambda("fast", 10)
    with pytest.raises(ValueError, match=">= 0"):
        f(-1)
    with pytest.raises(TypeError, match="int"):
        f(1.5)
    with pytest.raises(TypeError, match="optimizer"):
        make_scheduler("sgd", "fast", 10)
