"""Hourly discretisation of an ICU time series, driven by a discretizer config (MedFuse, reference §B.3).

A re-implementation of the YerevaNN benchmark's ``Discretizer`` and ``Normalizer`` (``mimic3models/preprocessing.py``,
copied unchanged into MedFuse as ``ehr_utils/preprocessing.py``) as pure functions:

* ``discretize`` puts events ``(hours since ICU intime, channel, value)`` into ``int(hours / timestep + 1 - EPS)``
  bins and keeps, per bin and channel, the last value. Raw values and the observation mask are kept apart from
  imputation, so they can be stored as they are.
* ``Hourly.features`` is the benchmark's model input: continuous values, one-hot categorical values, then one mask
  column per channel (76 columns for the MedFuse config), with imputation ``previous``: forward fill, and the
  config's normal value before a channel's first observation.
* ``Normalizer`` standardises the continuous columns with means and standard deviations fitted on (train) feature
  matrices. Its accumulator, ``Moments``, adds exactly, so any grouping or merge order of a Beam combine gives
  bit-identical statistics.

Time convention (upstream ``Discretizer.transform``, eps = 1e-6): an event at t hours is kept when
``-EPS < t < hours + EPS`` and goes to bin ``int(t / timestep - EPS)``, so bin k covers (k, k+1] timesteps and bin 0
covers [0, 1]: an event exactly on an hour boundary belongs to the bin that ends there, and one at exactly
``hours`` (48 h for in-hospital mortality) is inside, in the last bin.
"""

from __future__ import annotations

import dataclasses
import json
import math
from fractions import Fraction
from importlib import resources
from typing import Iterable, Mapping, Sequence

import numpy as np

EPS = 1e-6  # upstream Discretizer.transform: bin count, bin index and the end-of-series bound
STD_FLOOR = 1e-7  # upstream Normalizer._save_params: smaller standard deviations are raised to this
ONE_HOT = "->"  # upstream header: "<channel>-><value>" for one-hot columns, "mask-><channel>" for masks
FLOAT32_MAX = float(np.finfo(np.float32).max)  # the series are stored as float32: larger magnitudes become inf


@dataclasses.dataclass(frozen=True)
class DiscretizerConfig:
    """The channels in column order and, aligned with them, whether each is categorical, its possible values
    (one-hot order; empty for a continuous channel) and its normal value (the text the config holds)."""

    channels: tuple[str, ...]
    categorical: tuple[bool, ...]
    possible_values: tuple[tuple[str, ...], ...]
    normal_values: tuple[str, ...]

    def __post_init__(self):
        for i, channel in enumerate(self.channels):
            values, normal = self.possible_values[i], self.normal_values[i]
            if self.categorical[i] and normal not in values:
                raise ValueError(f"{channel}: normal value {normal!r} is not one of its possible values")
            if not self.categorical[i]:
                float(normal)  # a continuous normal value must be a number

    def index(self, channel: str) -> int:
        try:
            return self.channels.index(channel)
        except ValueError:
            raise ValueError(f"unknown channel {channel!r}") from None


def load_config(document: Mapping | None = None) -> DiscretizerConfig:
    """The config from a discretizer_config.json document; by default the packaged MedFuse one
    (``resources/medfuse/discretizer_config.json``)."""
    if document is None:
        text = resources.files("beam_pipeline.resources").joinpath("medfuse/discretizer_config.json").read_text()
        document = json.loads(text)
    channels = tuple(document["id_to_channel"])
    categorical = tuple(bool(document["is_categorical_channel"][c]) for c in channels)
    return DiscretizerConfig(
        channels=channels,
        categorical=categorical,
        possible_values=tuple(tuple(document["possible_values"][c]) if is_cat else ()
                              for c, is_cat in zip(channels, categorical)),
        normal_values=tuple(str(document["normal_values"][c]) for c in channels),
    )


CONFIG = load_config()
CHANNELS: tuple[str, ...] = CONFIG.channels


def feature_names(config: DiscretizerConfig = CONFIG) -> list[str]:
    """The feature columns in upstream's header order: per channel in config order its name (continuous) or one
    ``channel->value`` per possible value (categorical), then ``mask->channel`` for every channel."""
    names = []
    for channel, is_cat, values in zip(config.channels, config.categorical, config.possible_values):
        if is_cat:
            names.extend(f"{channel}{ONE_HOT}{v}" for v in values)
        else:
            names.append(channel)
    return names + [f"mask{ONE_HOT}{channel}" for channel in config.channels]


def continuous_columns(config: DiscretizerConfig = CONFIG) -> tuple[int, ...]:
    """Feature columns the normalizer standardises: those whose name has no "->" (MedFuse's ``cont_channels``)."""
    return tuple(i for i, name in enumerate(feature_names(config)) if ONE_HOT not in name)


def n_bins(hours: float, timestep: float = 1.0) -> int:
    """Upstream's bin count for a series ending at ``hours``: 48 for 48 h, 31 for 30.5 h."""
    return max(0, int(hours / timestep + 1.0 - EPS))


@dataclasses.dataclass(frozen=True)
class Hourly:
    """One stay's binned series: ``raw[bin][channel]`` is the bin's last value (float for a continuous channel,
    the possible-value text for a categorical one) or None where the channel was not observed."""

    raw: tuple[tuple[float | str | None, ...], ...]
    config: DiscretizerConfig = CONFIG

    @property
    def mask(self) -> np.ndarray:
        """n_bins x channels, 1 where the channel was observed in the bin."""
        return np.array([[v is not None for v in row] for row in self.raw], dtype=np.uint8).reshape(
            len(self.raw), len(self.config.channels))

    def raw_array(self) -> np.ndarray:
        """n_bins x channels float32: observed values, a categorical one as its index in the possible values, NaN
        where unobserved. Together with ``mask`` this stores the series without any imputation."""
        out = np.full((len(self.raw), len(self.config.channels)), np.nan, dtype=np.float32)
        for b, row in enumerate(self.raw):
            for c, value in enumerate(row):
                if value is not None:
                    out[b, c] = self.config.possible_values[c].index(value) if self.config.categorical[c] else value
        return out

    def features(self) -> np.ndarray:
        """n_bins x len(feature_names()) float32, upstream's model input with imputation ``previous``."""
        config, raw, mask = self.config, self.raw_array(), self.mask
        rows = np.arange(len(raw))
        blocks = []
        for c, (is_cat, values, normal) in enumerate(zip(config.categorical, config.possible_values,
                                                          config.normal_values)):
            latest = np.maximum.accumulate(np.where(mask[:, c] == 1, rows, -1))  # -1 before the first observation
            before_first = values.index(normal) if is_cat else float(normal)
            filled = np.where(latest >= 0, raw[np.maximum(latest, 0), c], before_first)
            blocks.append(np.eye(len(values), dtype=np.float32)[filled.astype(np.int64)] if is_cat else filled[:, None])
        blocks.append(mask)
        return np.concatenate(blocks, axis=1).astype(np.float32)


def discretize(events: Iterable[tuple[float, str, float | str]], hours: float, timestep: float = 1.0,
               config: DiscretizerConfig = CONFIG) -> Hourly:
    """Bin events ``(t hours since intime, channel, value)`` over [0, hours]; see the module docstring for the
    bounds. The last value in a bin wins: the one with the latest t, and among equal t the largest value (numeric
    order for a continuous channel, text order for a categorical one) so the result never depends on input order;
    upstream sorts by (charttime, variable, value) and keeps the last, which is the same rule for its cleaned
    (float) channels. Values must be clean: a number finite in float32 for a continuous channel (``storable``), one
    of the possible values for a categorical one (``cohorts.medfuse_events.clean_value`` returns None for anything
    else)."""
    if not hours >= 0 or not timestep > 0:
        raise ValueError(f"need hours >= 0 and timestep > 0, got {hours} and {timestep}")
    count = n_bins(hours, timestep)
    latest: dict[tuple[int, int], tuple[float, float | str]] = {}
    for t, channel, value in events:
        c = config.index(channel)
        value = _checked(config, c, value)
        if not math.isfinite(t):
            raise ValueError(f"{channel}: event time {t!r} is not a finite number of hours")
        if not -EPS < t < hours + EPS or count == 0:
            continue
        # Clamped: with a timestep other than 1 an event within EPS of the end can compute one bin too far.
        b = min(count - 1, max(0, math.floor(t / timestep - EPS)))
        if (b, c) not in latest or (t, value) > latest[b, c]:
            latest[b, c] = (t, value)
    raw = tuple(tuple(latest[b, c][1] if (b, c) in latest else None for c in range(len(config.channels)))
                for b in range(count))
    return Hourly(raw, config)


def storable(value: float | str) -> bool:
    """Whether a cleaned value survives the float32 the series is stored in: a categorical's text, or a number
    within float32's finite range (1e39 is finite in float64 but inf in float32, which the normaliser cannot fit)."""
    return isinstance(value, str) or abs(value) <= FLOAT32_MAX


def _checked(config: DiscretizerConfig, c: int, value) -> float | str:
    if config.categorical[c]:
        if value not in config.possible_values[c]:
            raise ValueError(f"{config.channels[c]}: {value!r} is not one of its possible values")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not storable(value):
        raise ValueError(f"{config.channels[c]}: {value!r} is not a finite number within float32's range")
    return float(value)


# ----------------------------------------------------------------------------------------------------------------
# Normalisation

_SCALE = 2 ** 1074  # every finite float64 is an integer multiple of 2**-1074: sums of such integers are exact


def _fixed(x: float) -> int:
    numerator, denominator = float(x).as_integer_ratio()
    return numerator * (_SCALE // denominator)


@dataclasses.dataclass(frozen=True)
class Moments:
    """Mergeable statistics of feature matrices over ``columns``: the number of rows, and per column the sum and
    the sum of squares as exact fixed-point integers (units of 2**-1074). Each matrix's sums are taken in float64
    once; adding matrices is then exact, so the fit does not depend on the order or grouping of a combine.
    ``Moments()`` is the empty accumulator."""

    columns: tuple[int, ...] = ()
    count: int = 0
    sums: tuple[int, ...] = ()
    squares: tuple[int, ...] = ()

    @classmethod
    def of(cls, features: np.ndarray, columns: Sequence[int] | None = None) -> Moments:
        """The statistics of one feature matrix (default columns: the continuous ones of the packaged config)."""
        columns = tuple(continuous_columns() if columns is None else columns)
        x = np.asarray(features, dtype=np.float64)[:, list(columns)]
        if not np.isfinite(x).all():
            raise ValueError("a feature matrix holds a non-finite value")
        return cls(columns, x.shape[0], tuple(map(_fixed, x.sum(axis=0))), tuple(map(_fixed, (x * x).sum(axis=0))))

    def __add__(self, other: Moments) -> Moments:
        if not self.columns and not self.count:
            return other
        if not other.columns and not other.count:
            return self
        if self.columns != other.columns:
            raise ValueError(f"cannot merge statistics of columns {self.columns} and {other.columns}")
        return Moments(self.columns, self.count + other.count,
                       tuple(a + b for a, b in zip(self.sums, other.sums)),
                       tuple(a + b for a, b in zip(self.squares, other.squares)))


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """Per standardised column its mean and sample standard deviation (ddof 1, floored at STD_FLOOR, as upstream)
    over every row (hour) of the fitted matrices."""

    columns: tuple[int, ...]
    names: tuple[str, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]
    count: int

    @classmethod
    def from_moments(cls, moments: Moments, config: DiscretizerConfig = CONFIG) -> Normalizer:
        n = moments.count
        if n < 2:
            raise ValueError(f"a standard deviation needs at least 2 rows, got {n}")
        means, stds = [], []
        for s, q in zip(moments.sums, moments.squares):
            means.append(float(Fraction(s, n * _SCALE)))
            variance = Fraction(q * n * _SCALE - s * s, n * (n - 1) * _SCALE * _SCALE)
            stds.append(max(math.sqrt(max(float(variance), 0.0)), STD_FLOOR))
        names = feature_names(config)
        return cls(moments.columns, tuple(names[i] for i in moments.columns), tuple(means), tuple(stds), n)

    def apply(self, features: np.ndarray) -> np.ndarray:
        """A float32 copy with the fitted columns standardised; the other columns (one-hot, masks) unchanged."""
        out = np.array(features, dtype=np.float64)
        columns = list(self.columns)
        out[:, columns] = (out[:, columns] - np.array(self.means)) / np.array(self.stds)
        return out.astype(np.float32)

    def as_dict(self) -> dict:
        """JSON-safe description for metadata.json."""
        return {"columns": list(self.names), "means": list(self.means), "stds": list(self.stds),
                "rows": self.count, "ddof": 1, "std_floor": STD_FLOOR}


def fit(matrices: Iterable[np.ndarray], config: DiscretizerConfig = CONFIG) -> Normalizer:
    """The normalizer of the given (train) feature matrices over the config's continuous columns."""
    columns = continuous_columns(config)
    total = Moments()
    for features in matrices:
        total = total + Moments.of(features, columns)
    return Normalizer.from_moments(total, config)
