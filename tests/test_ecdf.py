import json
import math
import pickle
import random

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline.transforms.ecdf import Ecdf, FitEcdf, apply_ecdf, fit_ecdf
from conftest import test_pipeline

COLUMNS = (50912, 50931, 51006, 51222)  # the last one is never measured in train


def _vectors(n, seed=0):
    """Train-like vectors: ties (values on a coarse grid), missing values as None and NaN, an empty last column."""
    rng = random.Random(seed)
    vectors = []
    for _ in range(n):
        vectors.append((
            round(rng.uniform(0.3, 3.0), 1) if rng.random() < 0.8 else None,
            float(rng.randint(60, 200)) if rng.random() < 0.9 else math.nan,
            rng.choice([5.0, 10.0, 10.0, 20.0, None]),
            None,
        ))
    return vectors


def _train_column(vectors, i):
    return np.array([v[i] for v in vectors if v[i] is not None and not math.isnan(v[i])], dtype=float)


def test_percentiles_match_a_brute_force_count_with_numpy():
    vectors = _vectors(500)
    ecdf = fit_ecdf(COLUMNS, vectors)
    for i in range(3):
        train = _train_column(vectors, i)
        assert ecdf.values[i] == tuple(np.sort(train))
        probes = list(train) + [train.min() - 1, train.max() + 1, float(np.median(train)) + 0.05, -1e9, 1e9]
        for value in probes:
            assert ecdf.percentile(i, value) == np.count_nonzero(train <= value) / len(train)
        brute_mean = np.mean([np.count_nonzero(train <= v) / len(train) for v in train])
        assert ecdf.mean_percentiles()[i] == pytest.approx(brute_mean, rel=1e-12)


def test_the_step_is_right_continuous_with_ties():
    ecdf = fit_ecdf((1,), [(2.0,), (1.0,), (2.0,), (None,), (3.0,), (math.nan,)])
    assert ecdf.values == ((1.0, 2.0, 2.0, 3.0),)  # None and NaN are both missing
    assert [ecdf.percentile(0, v) for v in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 99.0)] == [
        0.0, 0.25, 0.25, 0.75, 0.75, 1.0, 1.0]
    assert ecdf.mean_percentiles() == ((0.25 + 0.75 + 0.75 + 1.0) / 4,)


def test_a_column_never_observed_in_train_gives_zeros_never_nan():
    ecdf = fit_ecdf(COLUMNS, _vectors(50))
    assert ecdf.values[3] == ()
    assert ecdf.percentile(3, 1.0) == 0.0 and ecdf.mean_percentiles()[3] == 0.0
    percentiles, observed = apply_ecdf(ecdf, (None, None, None, 4.2))
    assert percentiles[3] == 0.0 and observed[3] == 1
    assert not any(math.isnan(p) for p in percentiles)
    summary = ecdf.summary()
    assert summary["never_observed"] == [51222]
    assert summary["per_itemid"]["51222"] == {"n_train_values": 0, "min": None, "max": None, "median": None,
                                              "mean_percentile": 0.0}


def test_apply_uses_the_train_mean_for_missing_values_and_flags_measured_ones():
    ecdf = fit_ecdf((7, 8), [(1.0, 10.0), (2.0, None), (3.0, 30.0), (4.0, 40.0)])
    means = ecdf.mean_percentiles()
    assert means == (2.5 / 4, (1 / 3 + 2 / 3 + 1) / 3)
    assert apply_ecdf(ecdf, (2.0, None)) == ((0.5, means[1]), (1, 0))
    assert apply_ecdf(ecdf, (math.nan, 35.0)) == ((means[0], 2 / 3), (0, 1))
    assert apply_ecdf(ecdf, (0.0, 99.0)) == ((0.0, 1.0), (1, 1))  # below the train minimum, above the maximum
    with pytest.raises(ValueError, match="2 columns"):
        apply_ecdf(ecdf, (1.0,))
    with pytest.raises(ValueError, match="2 columns"):
        fit_ecdf((7, 8), [(1.0, 2.0, 3.0)])


def test_summary_is_json_safe_and_describes_the_train_values():
    ecdf = fit_ecdf((7, 8), [(1.0, 10.0), (2.0, None), (3.0, 30.0), (4.0, 40.0)])
    summary = json.loads(json.dumps(ecdf.summary(), allow_nan=False))
    assert summary == {
        "columns": [7, 8],
        "per_itemid": {
            "7": {"n_train_values": 4, "min": 1.0, "max": 4.0, "median": 2.5, "mean_percentile": 0.625},
            "8": {"n_train_values": 3, "min": 10.0, "max": 40.0, "median": 30.0,
                  "mean_percentile": ecdf.mean_percentiles()[1]},
        },
        "never_observed": [],
    }


def test_signed_zeros_fit_the_same_in_any_order():
    assert fit_ecdf((1,), [(0.0,), (-0.0,)]).summary() == fit_ecdf((1,), [(-0.0,), (0.0,)]).summary()
    assert repr(fit_ecdf((1,), [(-0.0,)]).values) == "((0.0,),)"


def test_the_fit_survives_pickling_with_its_means():
    ecdf = fit_ecdf(COLUMNS, _vectors(30))
    copy = pickle.loads(pickle.dumps(ecdf))
    assert copy == ecdf and copy.mean_percentiles() == ecdf.mean_percentiles()


def test_ecdf_rejects_inconsistent_columns():
    with pytest.raises(ValueError, match="columns listed twice"):
        Ecdf((1, 1), ((), ()))
    with pytest.raises(ValueError, match="1 value columns for 2 columns"):
        Ecdf((1, 2), ((),))


def test_the_beam_fit_equals_the_pure_fit_whatever_the_order():
    vectors = _vectors(400, seed=3)
    expected = fit_ecdf(COLUMNS, vectors)
    shuffled = list(vectors)
    random.Random(1).shuffle(shuffled)
    for order in (vectors, shuffled):
        with test_pipeline() as p:
            fitted = (p | beam.Create(order, reshuffle=True) | beam.Reshuffle() | FitEcdf(COLUMNS))
            assert_that(fitted, equal_to([expected]))


def test_the_beam_fit_of_no_rows_is_an_ecdf_without_values():
    with test_pipeline() as p:
        fitted = p | beam.Create([], reshuffle=False) | FitEcdf((1, 2))
        assert_that(fitted | beam.Map(lambda e: (e.values, e.mean_percentiles())),
                    equal_to([(((), ()), (0.0, 0.0))]))
