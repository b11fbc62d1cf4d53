"""The shared range checks: hand-picked values on both sides of every bound."""

from __future__ import annotations

import math

import pytest

from ssit.config import ConfigError
from ssit.validators import (
    finite,
    first_failure,
    learning_rate,
    non_negative,
    number_pair,
    positive,
    probability,
    refuse_first_failure,
    strictly_increasing,
    temperature,
    whole_number,
    within,
)

NOT_NUMBERS = (math.nan, math.inf, -math.inf, "0.5", None, True, [0.5])


def ok(check) -> bool:
    return check[2]


@pytest.mark.parametrize("value", NOT_NUMBERS)
def test_non_numbers_fail_every_numeric_check(value):
    for check in (finite("k", value), positive("k", value), non_negative("k", value),
                  within("k", value, -1e9, 1e9), probability("k", value),
                  learning_rate("k", value), temperature("k", value),
                  whole_number("k", value, 0)):
        assert not ok(check)


def test_bounds_are_where_they_say():
    assert ok(positive("k", 1e-300)) and not ok(positive("k", 0))
    assert ok(non_negative("k", 0)) and not ok(non_negative("k", -1e-12))
    assert ok(probability("k", 0)) and ok(probability("k", 1)) and not ok(probability("k", 1.01))
    assert not ok(within("k", 1, 0, 1, open_high=True)) and ok(within("k", 0.999, 0, 1))
    assert not ok(within("k", 0, 0, 1, open_low=True)) and ok(within("k", 1e-9, 0, 1,
                                                                     open_low=True))
    assert ok(whole_number("k", 256, 1, 256)) and not ok(whole_number("k", 257, 1, 256))
    assert not ok(whole_number("k", 2.0, 1))


@pytest.mark.parametrize(("value", "valid"), [
    (1e-3, True), (1e-9, True), (10, True), (1e-300, False), (1e308, False), (0, False),
    (-1e-3, False),
])
def test_learning_rates(value, valid):
    assert ok(learning_rate("optim.lr", value)) is valid


@pytest.mark.parametrize(("value", "valid"), [
    (0.07, True), (1e-4, True), (100, True), (5e-5, False), (0, False), (-0.2, False),
    (1e308, False),
])
def test_temperatures(value, valid):
    # From 1e-4 up, 1 / T = 1e4 at most: a cosine logit over T stays below float16's 65504.
    assert ok(temperature("t", value)) is valid


@pytest.mark.parametrize(("value", "valid"), [
    ([0.08, 0.8], True), ((1, 1), True), ([0.9, 0.1], False), ([0, 0.5], False),
    ([0.5], False), ([0.5, 1.5], False), (["a", "b"], False), ([math.nan, 1], False),
    (0.5, False),
])
def test_number_pairs(value, valid):
    assert ok(number_pair("crop_scale", value, 0, 1, open_low=True)) is valid


@pytest.mark.parametrize(("value", "valid"), [
    ([1, 2, 3, 4], True), ([2], True), ([0, 4], True), ([1, 1, 2], False), ([3, 2], False),
    ([], False), ([-1, 0], False), ([1.0, 2.0], False), ([True, 2], False), ("1234", False),
])
def test_strictly_increasing(value, valid):
    assert ok(strictly_increasing("backbone.cnn_levels", value)) is valid


def test_the_first_failure_is_reported_in_one_line():
    checks = [positive("a", 1), probability("b", 2), positive("c", -1)]
    assert first_failure(checks) == "b must be in [0, 1], got 2"
    assert first_failure(checks[:1]) is None
    with pytest.raises(ConfigError) as info:
        refuse_first_failure(checks)
    assert str(info.value) == "config key 'b' must be in [0, 1], got 2"
    refuse_first_failure(checks[:1])
