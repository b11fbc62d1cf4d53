"""Small value checks shared by every configuration section.

A check is a :data:`RangeCheck` ``(dotted key, value, ok, allowed range in words)``; a section
lists its checks and :func:`refuse_first_failure` turns the first failing one into a one-line
:class:`~ssit.config.ConfigError` naming the key, the value and what is allowed. The checks
accept any value: a string, a boolean or a NaN where a number belongs simply fails.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import Any

from ssit.config import ConfigError

# (dotted key, value, whether it is valid, the valid range in words)
RangeCheck = tuple[str, Any, bool, str]

# Learning rates outside this range overflow or vanish in float32 updates (or are typing slips).
LR_RANGE = (1e-9, 10.0)
# 1 / temperature must stay far from float16's largest value (65504) once multiplied by a
# similarity of up to 1, and a temperature above 100 flattens any softmax to uniform.
TEMPERATURE_RANGE = (1e-4, 100.0)


def is_number(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (booleans are not numbers here)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def finite(key: str, value: Any) -> RangeCheck:
    """A check that ``value`` is a finite number."""
    return (key, value, is_number(value), "a finite number")


def positive(key: str, value: Any) -> RangeCheck:
    """A check that ``value`` is a finite number above 0."""
    return (key, value, is_number(value) and value > 0, "a finite number > 0")


def non_negative(key: str, value: Any) -> RangeCheck:
    """A check that ``value`` is a finite number of at least 0."""
    return (key, value, is_number(value) and value >= 0, "a finite number >= 0")


def within(
    key: str, value: Any, low: float, high: float, *, open_low: bool = False,
    open_high: bool = False,
) -> RangeCheck:
    """A check that ``value`` lies between ``low`` and ``high`` (ends included unless open)."""
    above = is_number(value) and (value > low if open_low else value >= low)
    ok = above and (value < high if open_high else value <= high)
    words = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    return (key, value, ok, f"in {words}")


def whole_number(key: str, value: Any, low: int, high: int | None = None) -> RangeCheck:
    """A check that ``value`` is an integer of at least ``low`` (and at most ``high``)."""
    ok = (isinstance(value, int) and not isinstance(value, bool) and value >= low
          and (high is None or value <= high))
    words = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
    return (key, value, ok, words)


def probability(key: str, value: Any) -> RangeCheck:
    """A check that ``value`` is a probability in [0, 1]."""
    return within(key, value, 0, 1)


def learning_rate(key: str, value: Any) -> RangeCheck:
    """A check that ``value`` is a usable learning rate (see :data:`LR_RANGE`)."""
    return within(key, value, *LR_RANGE)


def temperature(key: str, value: Any) -> RangeCheck:
    """A check that ``value`` is a usable softmax temperature (see :data:`TEMPERATURE_RANGE`)."""
    return within(key, value, *TEMPERATURE_RANGE)


def number_pair(key: str, value: Any, low: float, high: float, *, open_low: bool = False,
                ) -> RangeCheck:
    """A check that ``value`` is ``[a, b]`` with ``a <= b``, both in the range ``low``-``high``
    (``low`` itself excluded with ``open_low``)."""
    pair = isinstance(value, (list, tuple)) and len(value) == 2
    ok = pair and all(within(key, item, low, high, open_low=open_low)[2] for item in value)
    words = f"{'(' if open_low else '['}{low:g}, {high:g}]"
    return (key, value, bool(ok and value[0] <= value[1]),
            f"[low, high] with low <= high, both in {words}")


def strictly_increasing(key: str, value: Any, low: int = 0) -> RangeCheck:
    """A check that ``value`` is a non-empty list of integers >= ``low``, each above the last."""
    items = list(value) if isinstance(value, (list, tuple)) else None
    ok = (bool(items) and all(isinstance(i, int) and not isinstance(i, bool) and i >= low
                              for i in items)
          and all(b > a for a, b in itertools.pairwise(items)))
    return (key, value, ok, f"a non-empty, strictly increasing list of integers >= {low}")


def first_failure(checks: Iterable[RangeCheck]) -> str | None:
    """``"<key> must be <allowed>, got <value>"`` for the first failing check, else None."""
    for key, value, ok, expected in checks:
        if not ok:
            return f"{key} must be {expected}, got {value!r}"
    return None


def refuse_first_failure(checks: Iterable[RangeCheck]) -> None:
    """Raise ConfigError (one line: key, value, what is allowed) for the first failing check."""
    for key, value, ok, expected in checks:
        if not ok:
            raise ConfigError(f"config key '{key}' must be {expected}, got {value!r}")
