"""Windows as data: every bound, inclusivity, choice and tie-break against a brute-force reading of the rule."""

import datetime as dt
import itertools
import random

import pytest

from beam_pipeline.transforms.windows import Window, choose, in_window

T0 = dt.datetime(2180, 7, 23, 8, 44)
HOUR = dt.timedelta(hours=1)
SECOND = dt.timedelta(seconds=1)


@pytest.mark.parametrize("lower_inclusive,upper_inclusive", list(itertools.product((True, False), repeat=2)))
def test_bounds_and_inclusivity(lower_inclusive, upper_inclusive):
    window = Window("admittime", 24, 72, lower_inclusive, upper_inclusive)
    assert window.contains(T0, T0 + 24 * HOUR) is lower_inclusive
    assert window.contains(T0, T0 + 72 * HOUR) is upper_inclusive
    assert window.contains(T0, T0 + 24 * HOUR + SECOND)
    assert window.contains(T0, T0 + 72 * HOUR - SECOND)
    assert not window.contains(T0, T0 + 24 * HOUR - SECOND)
    assert not window.contains(T0, T0 + 72 * HOUR + SECOND)


def test_negative_offsets():
    window = Window("admittime", -24, 24)
    assert window.contains(T0, T0 - 24 * HOUR) and window.contains(T0, T0 + 24 * HOUR)
    assert not window.contains(T0, T0 - 24 * HOUR - SECOND)


def _brute_force(window, anchor, events):
    """The rule read literally: filter by Δ in hours with the declared comparisons, then the extreme time, then
    the smallest id."""
    def ok(t):
        d = (t - anchor).total_seconds() / 3600
        lower = d >= window.lower_hours if window.lower_inclusive else d > window.lower_hours
        upper = d <= window.upper_hours if window.upper_inclusive else d < window.upper_hours
        return lower and upper
    inside = [e for e in events if ok(e[0])]
    if not inside:
        return None
    best = (min if window.choice == "earliest" else max)(t for t, _ in inside)
    return min(e for e in inside if e[0] == best)


@pytest.mark.parametrize("choice", ["earliest", "latest"])
def test_choice_matches_brute_force_with_ties(choice):
    rng = random.Random(7)
    for _ in range(300):
        window = Window("t", rng.choice([-24, 0, 24]), rng.choice([24, 48, 72]), rng.random() < .5,
                        rng.random() < .5, choice, "id")
        # times on a coarse grid so exact bounds and ties are common
        events = [(T0 + rng.randint(-30, 80) * HOUR, f"{rng.randint(0, 99):02d}") for _ in range(rng.randint(0, 8))]
        rng.shuffle(events)
        got = choose(window, T0, events, time=lambda e: e[0], tie_break=lambda e: e[1])
        assert got == _brute_force(window, T0, events)


def test_fallback_order_is_time_then_tie_break():
    window = Window("admittime", -24, 24, choice="earliest", tie_break="study_id")
    events = [(T0 + HOUR, 3), (T0 - HOUR, 9), (T0 + HOUR, 1), (T0 + 30 * HOUR, 0)]
    assert in_window(window, T0, events, lambda e: e[0], lambda e: e[1]) == [(T0 - HOUR, 9), (T0 + HOUR, 1),
                                                                             (T0 + HOUR, 3)]
    latest = Window("intime", 0, 48, choice="latest", tie_break="dicom_id")
    assert in_window(latest, T0, events, lambda e: e[0], lambda e: e[1]) == [(T0 + 30 * HOUR, 0), (T0 + HOUR, 1),
                                                                              (T0 + HOUR, 3)]


def test_invalid_windows_fail():
    with pytest.raises(ValueError, match="choice"):
        Window("t", 0, 1, choice="nearest")
    with pytest.raises(ValueError, match="lower bound"):
        Window("t", 2, 1)


def test_describe_is_the_documented_notation():
    window = Window("admittime", 24, 72, lower_inclusive=False, tie_break="dicom_id")
    assert window.describe() == "24 h < Δ ≤ 72 h from admittime (earliest; ties: smallest dicom_id)"
