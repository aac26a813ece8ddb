"""Time windows as data: which events of a subject belong to an anchor (an admission, a stay), and which one wins.

Every cohort declares its windows as ``Window`` values (cohort-definitions.md §F: easy to get subtly wrong, so the
bounds, their inclusivity, the choice and the tie-break are data, and this one function applies all of them).
Pure Python: no Beam.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Callable, Iterable, Sequence, TypeVar

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Window:
    """Events with ``lower <= Δ <= upper`` hours (each bound strict when not inclusive), Δ = event time - anchor.

    ``choice``: ``earliest`` or ``latest`` event time; ties between events at the same time go to the smallest
    ``tie_break`` value (a stable id such as dicom_id), never to input order."""

    anchor: str  # the anchor's time column, e.g. "admittime"
    lower_hours: float
    upper_hours: float
    lower_inclusive: bool = True
    upper_inclusive: bool = True
    choice: str = "earliest"
    tie_break: str = ""  # the event field that breaks ties (documentation; the caller passes its value)

    def __post_init__(self):
        if self.choice not in ("earliest", "latest"):
            raise ValueError(f"unknown window choice {self.choice!r}")
        if self.lower_hours > self.upper_hours:
            raise ValueError(f"window lower bound {self.lower_hours} > upper bound {self.upper_hours}")

    def contains(self, anchor: dt.datetime, time: dt.datetime) -> bool:
        delta = (time - anchor) / dt.timedelta(hours=1)
        above = delta >= self.lower_hours if self.lower_inclusive else delta > self.lower_hours
        below = delta <= self.upper_hours if self.upper_inclusive else delta < self.upper_hours
        return above and below

    def describe(self) -> str:
        """The window in the docs' notation, e.g. ``24 h < Δ ≤ 72 h from admittime (earliest; ties: smallest
        dicom_id)``."""
        low = "≤" if self.lower_inclusive else "<"
        high = "≤" if self.upper_inclusive else "<"
        ties = f"; ties: smallest {self.tie_break}" if self.tie_break else ""
        return (f"{self.lower_hours:g} h {low} Δ {high} {self.upper_hours:g} h from {self.anchor} "
                f"({self.choice}{ties})")

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "rule": self.describe()}


def in_window(window: Window, anchor: dt.datetime, events: Iterable[T], time: Callable[[T], dt.datetime],
              tie_break: Callable[[T], object]) -> list[T]:
    """The events inside the window, best first: by time in the window's direction, then by ``tie_break``
    ascending. The first is the choice; the rest are the fallbacks in order (e.g. the next ECG when one has NaN or
    is all zero)."""
    inside = [e for e in events if window.contains(anchor, time(e))]
    if window.choice == "earliest":
        return sorted(inside, key=lambda e: (time(e), tie_break(e)))
    # latest first, ties still to the smallest tie-break value
    by_tie = sorted(inside, key=tie_break)
    return sorted(by_tie, key=time, reverse=True)


def choose(window: Window, anchor: dt.datetime, events: Sequence[T], time: Callable[[T], dt.datetime],
           tie_break: Callable[[T], object]) -> T | None:
    """The window's choice among ``events``, or None when none falls inside."""
    ranked = in_window(window, anchor, events, time, tie_break)
    return ranked[0] if ranked else None
