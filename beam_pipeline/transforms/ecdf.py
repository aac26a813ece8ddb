"""Lab percentiles from an empirical CDF fitted on the train split only (Symile-MIMIC, reference §A.7-A.8).

Per lab itemid, percentile(v) is the fraction of the column's non-missing train values <= v: a right-continuous
step, 0.0 below the train minimum, 1.0 at or above the maximum. A missing value (None or NaN) is replaced by the
column's train mean percentile and flagged ``observed = 0``; a measured one gets its percentile and ``observed = 1``.
That is what the original's "missingness" tensor really holds (1 = measured), whatever its README says.

A column with no train value at all maps every value to 0.0 and its mean is 0.0 (no NaN ever reaches an output);
``summary`` lists it under ``never_observed``.

Column order is the caller's: vectors are aligned with ``columns``. Symile-MIMIC uses ascending itemid, the order the
original's tensors have (it iterates the sorted keys of labs_means.json, not its constants order).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import statistics
from typing import Iterable, Sequence

import apache_beam as beam


def _missing(value: float | None) -> bool:
    return value is None or math.isnan(value)


def _check_length(columns: Sequence[int], vector: Sequence[float | None]) -> None:
    if len(vector) != len(columns):
        raise ValueError(f"a lab vector has {len(vector)} values for {len(columns)} columns")


@dataclasses.dataclass(frozen=True)
class Ecdf:
    """The fitted CDF: per column (itemid) the sorted non-missing train values. The mean percentiles are computed
    once here, as every record applying the CDF needs them."""
    columns: tuple[int, ...]
    values: tuple[tuple[float, ...], ...]
    _means: tuple[float, ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if len(self.values) != len(self.columns):
            raise ValueError(f"{len(self.values)} value columns for {len(self.columns)} columns")
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"columns listed twice: {sorted(self.columns)}")
        # Mean of percentile(v) over the train values: each v counts the train values <= v.
        means = tuple(sum(bisect.bisect_right(train, v) for v in train) / (len(train) * len(train)) if train else 0.0
                      for train in self.values)
        object.__setattr__(self, "_means", means)

    def percentile(self, i: int, value: float) -> float:
        """Fraction of column i's train values <= value (0.0 for a column never observed in train)."""
        train = self.values[i]
        return bisect.bisect_right(train, value) / len(train) if train else 0.0

    def mean_percentiles(self) -> tuple[float, ...]:
        """Per column the mean train percentile: the original's labs_means.json, used for missing values."""
        return self._means

    def summary(self) -> dict:
        """JSON-safe description for metadata.json, keyed by itemid as a string."""
        per_itemid = {}
        for column, train, mean in zip(self.columns, self.values, self._means):
            per_itemid[str(column)] = {
                "n_train_values": len(train),
                "min": train[0] if train else None,
                "max": train[-1] if train else None,
                "median": statistics.median(train) if train else None,
                "mean_percentile": mean,
            }
        return {"columns": list(self.columns), "per_itemid": per_itemid,
                "never_observed": [column for column, train in zip(self.columns, self.values) if not train]}


class _FitEcdfFn(beam.CombineFn):
    """Accumulates each column's present values; sorts them only at the end, so neither input order nor bundling
    changes the result."""

    def __init__(self, columns: Sequence[int]):
        self._columns = tuple(columns)

    def create_accumulator(self):
        return [[] for _ in self._columns]

    def add_input(self, accumulator, vector):
        _check_length(self._columns, vector)
        for kept, value in zip(accumulator, vector):
            if not _missing(value):
                kept.append(float(value) + 0.0)  # + 0.0 turns -0.0 into 0.0: equal values sort the same way
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for accumulator in accumulators:
            for kept, more in zip(merged, accumulator):
                kept.extend(more)
        return merged

    def extract_output(self, accumulator):
        return Ecdf(self._columns, tuple(tuple(sorted(kept)) for kept in accumulator))


def fit_ecdf(columns: Sequence[int], vectors: Iterable[Sequence[float | None]]) -> Ecdf:
    """The CDF of the given (train) vectors; None or NaN is missing. The same fit FitEcdf runs in the pipeline."""
    fn = _FitEcdfFn(columns)
    accumulator = fn.create_accumulator()
    for vector in vectors:
        accumulator = fn.add_input(accumulator, vector)
    return fn.extract_output(accumulator)


def apply_ecdf(ecdf: Ecdf, raw: Sequence[float | None]) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """(percentiles, observed) of one raw lab vector: a missing value gets the train mean percentile and 0, a
    measured one its percentile and 1."""
    _check_length(ecdf.columns, raw)
    means = ecdf.mean_percentiles()
    percentiles, observed = [], []
    for i, value in enumerate(raw):
        if _missing(value):
            percentiles.append(means[i])
            observed.append(0)
        else:
            percentiles.append(ecdf.percentile(i, value))
            observed.append(1)
    return tuple(percentiles), tuple(observed)


class FitEcdf(beam.PTransform):
    """Raw lab vectors (tuples aligned with ``columns``; the caller keeps only train) -> one Ecdf, for use as a
    side input (``beam.pvalue.AsSingleton``). An empty input gives an Ecdf with no values.

    Memory: every present train value is kept, and the final merge holds them all in one worker: ~10k train
    admissions x 50 labs is 500k floats, a few tens of MB. Fitting on millions of rows per column (e.g. every
    labevents row rather than one value per admission) would need a quantile sketch instead, and approximate
    percentiles."""

    def __init__(self, columns: Sequence[int]):
        super().__init__()
        self._columns = tuple(columns)

    def expand(self, vectors):
        return vectors | "FitPerColumn" >> beam.CombineGlobally(_FitEcdfFn(self._columns))
