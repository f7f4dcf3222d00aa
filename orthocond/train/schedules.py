"""The one learning-rate schedule engine: the CVPR 2020 GCP schedules and the usual ones.

Every schedule is a multiplicative factor ``f(e)`` of the optimizer's base lr (the
``LambdaLR`` convention), ``e`` the **0-based** epoch. With the CVPR 2020 base lr 0.1
(FORMULAS §8, "lr" table), and ``R`` the schedule's reference length:

====================  ==================================  =====  ====================================
name                  lr(e) (base 0.1)                    R      factor f(e)
====================  ==================================  =====  ====================================
``"normal"``          0.1·0.1^⌊e/30⌋                      100    0.1^⌊e/30⌋
``"fast"``            0.1·(1 − (e − 1)/52)^11              30     (1 − (e − 1)/52)^11
``"adjusted"``        0.1·(1 − (e − 1)/49)^2               50     (1 − (e − 1)/49)^2
``"step"``            MultiStep: ×gamma at each milestone  —      gamma^#{m ≤ e}
``"multistep"``       ×gamma at (fractional) milestones    —      gamma^#{m ≤ e}
``"cosine"``          0.1·½(1 + cos(π e/T))                —      ½(1 + cos(π·min(e, T)/T))
``"constant"``        0.1                                 —      1
====================  ==================================  =====  ====================================

The formulas are applied literally with the 0-based epoch of the released code, so the
first epoch of ``fast`` runs at 0.1·(53/52)^11 = 0.1233 and of ``adjusted`` at
0.1·(50/49)^2 = 0.1041 (factors 1.233 and 1.041). The polynomial bases are clamped at 0, so
the factor never turns negative (only reachable past 53 resp. 50 reference epochs).

**Any epoch budget.** For a budget of ``T`` epochs the three paper schedules are stretched
(or squeezed) onto ``T``: epoch ``e`` reads the formula at ``e·R/T`` (a real number;
⌊·⌋ still applies for ``"normal"``). ``T = R`` is the paper's schedule exactly; e.g. ``normal``
over ``T = 10`` decays at epochs 3, 6 and 9. ``"step"`` defaults to the milestones
``⌊T/2⌋, ⌊3T/4⌋`` (the ICCV 2021 ImageNet decays 30/45 of 60) and ``gamma = 0.1``;
``"cosine"`` anneals to 0 at ``e = T``.

``"multistep"`` is ``"step"`` with milestones that may fall inside an epoch (any numbers
>= 0, in epochs; the trainer's default is the papers' fractions of the run).

**Per iteration.** With ``steps_per_epoch=S`` the returned callable takes the iteration
index ``t`` and evaluates ``f(⌊t/S⌋)``: the lr of the paper schedules and of ``"step"`` stays
constant within an epoch, as in the released code, and the scheduler is stepped every
iteration. ``"multistep"`` decays at the iteration ``round(m·S)`` of each milestone ``m`` and
``"cosine"`` anneals every iteration, ``½(1 + cos(π·min(t, S·T)/(S·T)))``.

Example:
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    >>> sched = make_scheduler(opt, "fast", epochs=30)      # call sched.step() every epoch
    >>> lr_lambda("adjusted", 50, base_lr=0.1)(0)             # 0.1041...
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR

from orthocond._checks import check_choice, check_float, check_int

__all__ = [
    "EPOCH_SCHEDULES",
    "REFERENCE_EPOCHS",
    "SCHEDULES",
    "ScheduleFactor",
    "last_decay_epoch",
    "lr_lambda",
    "make_scheduler",
]

#: The schedule names understood by :func:`lr_lambda` and :func:`make_scheduler`.
SCHEDULES = ("multistep", "cosine", "constant", "normal", "fast", "adjusted", "step")
#: The schedules whose lr is constant within an epoch (the CVPR 2020 ones and ``step``).
EPOCH_SCHEDULES = ("normal", "fast", "adjusted", "step")

#: Length in epochs of the CVPR 2020 ResNet schedules (their formulas are written for it).
REFERENCE_EPOCHS = {"normal": 100, "fast": 30, "adjusted": 50}


def _check_milestones(milestones: Any, epochs: int, name: str) -> tuple[Any, ...]:
    if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Sequence):
        raise TypeError(f"milestones must be a sequence of ints, got {type(milestones).__name__}")
    out = tuple(milestones)
    if name == "multistep":  # epochs, possibly fractional, anywhere >= 0
        return tuple(check_float(m, "milestones", low=0) for m in out)
    for m in out:
        if not isinstance(m, int) or isinstance(m, bool):
            raise TypeError(f"milestones must be ints, got {m!r}")
        if not 1 <= m <= epochs:
            raise ValueError(f"milestones must lie in [1, epochs={epochs}], got {m}")
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"milestones must be strictly increasing, got {list(out)}")
    return out


class ScheduleFactor:
    """The picklable callable returned by :func:`lr_lambda` (``LambdaLR`` saves its
    ``__dict__`` in ``state_dict``). See the module docstring for the formulas.

    Attributes:
        name (str), epochs (int), base_lr (float | None), steps_per_epoch (int | None),
        milestones (tuple[int, ...]), gamma (float).
    """

    def __init__(
        self,
        name: str,
        epochs: int,
        base_lr: float | None = None,
        *,
        steps_per_epoch: int | None = None,
        milestones: Sequence[int] | None = None,
        gamma: float = 0.1,
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        check_choice(name, "name", SCHEDULES)
        check_int(epochs, "epochs")
        base_lr = check_float(base_lr, "base_lr", low=0, low_open=True, allow_none=True)
        check_int(steps_per_epoch, "steps_per_epoch", allow_none=True)
        gamma = check_float(gamma, "gamma", low=0, high=1.0, low_open=True)
        if milestones is None:
            milestones = sorted({m for m in (epochs // 2, (3 * epochs) // 4) if m >= 1})
        elif name not in ("step", "multistep"):
            raise ValueError(f"milestones only apply to name='step' or 'multistep', got name={name!r}")
        self.name = name
        self.epochs = epochs
        self.base_lr = base_lr
        self.steps_per_epoch = steps_per_epoch
        self.milestones = _check_milestones(milestones, epochs, name)
        self.gamma = gamma

    def factor(self, epoch: int) -> float:
        """The factor f at a (0-based) epoch, without ``base_lr``."""
        name, T = self.name, self.epochs
        if name in REFERENCE_EPOCHS:
            R = REFERENCE_EPOCHS[name]
            if name == "normal":  # ⌊(e·R/T)/30⌋, in exact integer arithmetic
                return 10.0 ** -((epoch * R) // (30 * T))
            e = epoch * R / T
            if name == "fast":
                return max(0.0, 1.0 - (e - 1.0) / 52.0) ** 11
            return max(0.0, 1.0 - (e - 1.0) / 49.0) ** 2
        if name in ("step", "multistep"):
            return self.gamma ** sum(epoch >= m for m in self.milestones)
        if name == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(epoch, T) / T))
        return 1.0

    def __call__(self, index: int) -> float:
        """``index`` is the 0-based epoch, or the iteration when ``steps_per_epoch`` is set.
        Returns the factor, times ``base_lr`` when one was given."""
        check_int(index, "the schedule index", minimum=0)
        S = self.steps_per_epoch
        if S is None:
            f = self.factor(index)
        elif self.name == "multistep":
            f = self.gamma ** sum(index >= round(m * S) for m in self.milestones)
        elif self.name == "cosine":
            total = S * self.epochs
            f = 0.5 * (1.0 + math.cos(math.pi * min(index, total) / total))
        else:
            f = self.factor(index // S)
        return f if self.base_lr is None else self.base_lr * f

    def __repr__(self) -> str:
        return (
            f"ScheduleFactor({self.name!r}, epochs={self.epochs}, base_lr={self.base_lr}, "
            f"steps_per_epoch={self.steps_per_epoch}, milestones={list(self.milestones)}, "
            f"gamma={self.gamma})"
        )


def lr_lambda(
    name: str,
    epochs: int,
    base_lr: float | None = None,
    *,
    steps_per_epoch: int | None = None,
    milestones: Sequence[int] | None = None,
    gamma: float = 0.1,
) -> Callable[[int], float]:
    """The schedule ``name`` over ``epochs`` epochs as a callable of the 0-based epoch.

    Args:
        name: one of :data:`SCHEDULES` (formulas in the module docstring).
        epochs: the epoch budget T (>= 1); ``normal``/``fast``/``adjusted`` are rescaled from
            their reference lengths 100/30/50 by ``e -> e·R/T``.
        base_lr: None (default) returns the multiplicative factor (for ``LambdaLR``, whose
            optimizer holds the base lr); a float returns the lr itself, ``base_lr·f(e)``
            (``base_lr=0.1`` gives the paper's numbers).
        steps_per_epoch: if set, the callable takes the iteration index ``t`` and returns
            ``f(⌊t/steps_per_epoch⌋)`` (for a scheduler stepped every iteration).
        milestones: epochs of the decays of ``"step"`` (strictly increasing, in [1, T];
            default ``⌊T/2⌋, ⌊3T/4⌋``). gamma: its decay factor in (0, 1] (default 0.1).

    Returns a picklable :class:`ScheduleFactor`.

    Example:
        >>> f = lr_lambda("fast", 30)
        >>> round(f(0), 4), round(f(1), 4)
        (1.2331, 1.0)
    """
    return ScheduleFactor(
        name, epochs, base_lr, steps_per_epoch=steps_per_epoch, milestones=milestones, gamma=gamma
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    epochs: int,
    *,
    steps_per_epoch: int | None = None,
    milestones: Sequence[int] | None = None,
    gamma: float = 0.1,
    last_epoch: int = -1,
) -> LambdaLR:
    """A ``LambdaLR`` over ``optimizer`` with the factor of :func:`lr_lambda` for every
    param group (each group's initial lr is its base lr).

    Call ``scheduler.step()`` once per epoch, or once per iteration when
    ``steps_per_epoch`` is given. The scheduler's ``state_dict`` carries the schedule
    (``ScheduleFactor`` is a callable object), so resuming restores it.

    Example:
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> sched = make_scheduler(opt, "normal", epochs=100)   # 0.1, x0.1 at 30, 60, 90
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    check_int(last_epoch, "last_epoch", minimum=-1)
    factor = lr_lambda(
        name, epochs, steps_per_epoch=steps_per_epoch, milestones=milestones, gamma=gamma
    )
    return LambdaLR(optimizer, factor, last_epoch=last_epoch)


def last_decay_epoch(
    name: str,
    epochs: int,
    *,
    milestones: Sequence[int] | None = None,
    gamma: float = 0.1,
) -> int | None:
    """The 0-based epoch at which the last discrete lr decay of a schedule takes effect.

    That is where the hybrid NS→SVD protocol (ICCV 2021, FORMULAS §2) switches the
    meta-layer to the eigendecomposition (e.g. ``HybridSwitch(model,
    last_decay_epoch("step", 60))`` switches at epoch 45 of 60). ``"normal"`` and
    ``"step"`` have discrete decays; the smooth schedules (``fast``, ``adjusted``,
    ``cosine``) and ``constant`` return None, as does a ``step`` schedule whose decays
    all fall at or after the budget.

    Example:
        >>> last_decay_epoch("normal", 100), last_decay_epoch("step", 60)
        (90, 45)
    """
    f = lr_lambda(name, epochs, milestones=milestones, gamma=gamma)
    if name not in ("normal", "step"):
        return None
    values = [f(e) for e in range(epochs)]
    drops = [e for e in range(1, epochs) if values[e] < values[e - 1]]
    return drops[-1] if drops else None
