"""argparse ``type=`` converters of the command line (each raises ``ArgumentTypeError``)."""

from __future__ import annotations

import argparse
import math
from typing import Any, Callable

from orthocond.analysis import CORRUPTIONS


def _number(text: str, kind: type, accept: Callable[[float], bool], what: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not accept(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "a non-negative integer")


def finite_float(text: str) -> float:
    return _number(text, float, math.isfinite, "a finite number")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: math.isfinite(v) and v > 0, "a positive number")


def milestones(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated epochs such as 100,200,300, got {text!r}"
        ) from None
    return vals


def switch_epoch(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a 0-based epoch >= 0 or 'auto', got {text!r}")
    return v


def corruptions(text: str) -> tuple[str, ...]:
    if text.strip() == "all":
        return CORRUPTIONS
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [n for n in names if n not in CORRUPTIONS]
    if not names or bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"expected 'all' or distinct names of {','.join(CORRUPTIONS)} separated by commas, "
            f"got {text!r}"
        )
    return names


def severities(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        vals = ()
    if not vals or any(not 1 <= v <= 5 for v in vals) or len(set(vals)) != len(vals):
        raise argparse.ArgumentTypeError(
            f"expected distinct severities in 1..5 separated by commas, e.g. 1,3,5, got {text!r}"
        )
    return vals



def tasks(text: str) -> tuple[str, ...]:
    """Comma-separated distinct applications of ``orthocond compare`` (dbn, gcp)."""
    from orthocond.train import TASKS

    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [n for n in names if n not in TASKS]
    if not names or bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"expected distinct tasks of {','.join(TASKS)} separated by commas, got {text!r}"
        )
    return names
