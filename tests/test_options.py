"""Option validation (beam_pipeline/options.py): every number option is found by its type and must be a finite
number within its bounds; the checks between options still hold; messages name the flag."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pytest

from beam_pipeline import options
from beam_pipeline.options import Config

REQUIRED = {"mimic_cxr_root": "a", "mimic_ed_root": "b", "output": "c"}
NUMBERS = {f.name: f for f in options.number_fields(Config)}


def config(**values) -> Config:
    return Config(**REQUIRED, **values)


def test_number_options_are_found_by_type_and_each_declares_bounds_around_its_default():
    assert set(NUMBERS) == {"window_start_hours", "window_end_hours", "split_fractions", "max_tokens", "rag_top_k",
                            "text_batch_size", "image_size", "jpeg_quality", "image_read_ahead", "target_shard_mb",
                            "candidate_seed", "candidate_negatives", "min_words", "max_words"}
    for name, field in NUMBERS.items():
        low, high = field.metadata["bounds"]
        default = field.default if isinstance(field.default, tuple) else (field.default,)
        assert all(low <= value <= high for value in default), name
    assert options.number_problems(config()) == []


def _non_finite(field: dataclasses.Field, value: float):
    return (0.5, 0.5, value) if isinstance(field.default, tuple) else value


FLOATS = [name for name, f in NUMBERS.items() if not isinstance(f.default, int)]
INTS = [name for name, f in NUMBERS.items() if isinstance(f.default, int)]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", FLOATS)
def test_nan_and_infinities_are_rejected_naming_the_flag(name, value):
    bad = _non_finite(NUMBERS[name], value)
    with pytest.raises(ValueError) as err:
        config(**{name: bad})
    assert f"--{name} must be finite, got " in str(err.value)
    assert "summing to 1" not in str(err.value) and "must be <=" not in str(err.value)  # one problem, not three


@pytest.mark.parametrize("name", INTS)
def test_integers_outside_their_bounds_are_rejected(name):
    low, high = NUMBERS[name].metadata["bounds"]
    for value in (low - 1, high + 1, 10 ** 30):
        with pytest.raises(ValueError, match=f"--{name} must be between {low} and {high}, got {value}"):
            config(**{name: value})
    assert getattr(config(**{name: low}), name) == low and getattr(config(**{name: high}), name) == high


def test_split_fractions_nan_no_longer_passes():
    """NaN compares false with everything: nan,nan,nan passed the old non-negative and sum checks."""
    with pytest.raises(ValueError, match=r"--split_fractions must be finite, got nan,nan,nan$"):
        config(split_fractions=(math.nan,) * 3)


@pytest.mark.parametrize("values, message", [
    ({"split_fractions": (0.5, 0.5, 0.5)}, "--split_fractions must be three non-negative numbers summing to 1"),
    ({"split_fractions": (0.5, 0.5)}, "--split_fractions must be three non-negative numbers summing to 1"),
    ({"split_fractions": (-0.5, 0.5, 1.0)}, "--split_fractions must be between 0 and 1, got -0.5,0.5,1.0"),
    ({"window_start_hours": 5.0, "window_end_hours": 1.0}, "--window_start_hours must be <= --window_end_hours"),
    ({"window_end_hours": 1e6}, "--window_end_hours must be between -8760 and 8760"),
    ({"target_shard_mb": 0.0}, "--target_shard_mb must be between 0.001 and 1000000"),
])
def test_range_and_relation_checks(values, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        config(**values)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ValueError) as err:
        config(window_start_hours=math.nan, image_size=8, uncertain_policy="maybe")
    assert str(err.value).count(";") == 2


def test_help_names_each_cohorts_default_where_they_differ():
    """``run --help`` as a user runs it: --image_size is 518 only for ed_cxr, so the help says so per cohort, and a
    flag every cohort shares keeps its one default."""
    done = subprocess.run([sys.executable, "-m", "beam_pipeline.run", "--help"], capture_output=True, text=True,
                          check=True)
    text = " ".join(done.stdout.split())
    assert ("default by cohort: ed_cxr 518; symile_mimic 320; medfuse_ihm 224; medfuse_phenotyping 224; cxr_ehr 224; "
            "cxr_report 224;" in text)
    assert "default by cohort: ed_cxr AP,PA; symile_mimic AP,PA; medfuse_ihm AP;" in text
    assert "(default: 3; from 1 to 1000)" in text  # --rag_top_k
