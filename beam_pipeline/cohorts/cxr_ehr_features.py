"""CXR-EHR-MSN's per-image EHR variables, their encodings and feature groups (cohort-definitions.md §C), as pure
functions the cxr_ehr cohort calls per image: no transforms, no I/O.

What follows the original (nyuad-cai/CXR-EHR-MSN @ b3755c0, notebooks/EHR-data-extract.ipynb and
EHR-data-prep.ipynb) and what deliberately does not; each function's docstring has the details:

    matching    the admission / ICU stay an image falls in: start <= t <= end, both ends inclusive, by datetime
                ("time", our default) or by calendar date ("date", the original, which also matches an image
                taken hours before the admission / ICU stay began that day: a glimpse of the future); several
                matches: the latest start, then the largest id (the original: the last match in file order); the
                cohort also ranks an admission without a dischtime as holding every image from its admittime on, and
                rejects the image when that admission is chosen (its admission is unknown, never "none")
    age         mimic.age_at in the study's year: top-coded patients stay 91 (the original: 91 + (study year -
                anchor_year), e.g. 89 two years before); bins as the original, right-closed: "<20" holds 20, "90+"
                starts at 91
    view        PA / LATERAL / AP / LL, anything else or blank is the category "missing" (the original drops the
                other views and imputes blanks with a random forest: no imputation here)
    orientation Erect / Recumbent, anything else or blank is "missing" (the original imputes, as for the view)
    features    known at the image's time: gender, age, bins, view, orientation, in_admission, in_icu
    outcomes    the future of the image, kept apart: the admission's hospital_expire_flag and the ICU stay's
                length; encoded as alive/died only when asked for (the original treats them as features); a
                blank flag is an unknown outcome (RowError), never "alive"
    feature sets the original's 23 CSV files by name and column order; the ones with alive/died need outcomes
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import math
from typing import Any, Iterable, Mapping

from beam_pipeline import mimic

# --------------------------------------------------------------------------------------------------------------
# Which admission / ICU stay an image falls in (§C.1)

GRANULARITIES: tuple[str, ...] = ("time", "date")


@dataclasses.dataclass(frozen=True)
class Interval:
    """Rows (admissions, ICU stays) that contain an image: ``start <= t <= end``, both ends inclusive, compared as
    datetimes (granularity "time") or as calendar dates ("date": the original's StudyDate against the dates of
    admittime/dischtime). A row without an end contains nothing, unless asked to rank it as open (``open_end``).
    Several rows: the latest start time (the full datetime, at either granularity), then the largest ``key``, so the
    choice never depends on file order.

    Not a windows.Window: a Window measures events from one anchor, here each row brings its own two ends."""

    start: str  # the row's start column, e.g. "admittime"
    end: str  # the row's end column, e.g. "dischtime"
    key: str  # the row's id, the last tie-break, e.g. "hadm_id"
    granularity: str = "time"

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {self.granularity!r}; choose one of {', '.join(GRANULARITIES)}")

    def contains(self, row: Mapping[str, Any], when: dt.datetime, open_end: bool = False) -> bool:
        """Whether the row holds ``when``. A row without an end holds nothing, or with ``open_end`` every time from
        its start on: its end is unknown, so it may hold any of them (for a caller that rejects such a match)."""
        start, end = row[self.start], row[self.end]
        if end is None and not open_end:
            return False
        if self.granularity == "date":
            start, end, when = start.date(), None if end is None else end.date(), when.date()
        return start <= when and (end is None or when <= end)

    def describe(self) -> str:
        """The rule in the notation of the docs, e.g. ``admittime ≤ t ≤ dischtime (time; ...)``."""
        return (f"{self.start} ≤ t ≤ {self.end} (compared as {self.granularity}s, both ends inclusive; several: "
                f"latest {self.start}, then largest {self.key})")

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "rule": self.describe()}


ADMISSION_INTERVAL = Interval("admittime", "dischtime", "hadm_id")
ICU_INTERVAL = Interval("intime", "outtime", "stay_id")


def containing(interval: Interval, image: mimic.Image, rows: Iterable[Mapping[str, Any]],
               open_end: bool = False) -> list[Mapping[str, Any]]:
    """The image's subject's rows that contain its study time (``open_end``: Interval.contains), best first
    (latest start, then largest key). More than one is a tie the choice settled; callers may count them."""
    inside = [row for row in rows
              if row["subject_id"] == image.subject_id and interval.contains(row, image.study_time, open_end)]
    return sorted(inside, key=lambda row: (row[interval.start], row[interval.key]), reverse=True)


def admission_of(image: mimic.Image, admissions: Iterable[Mapping[str, Any]], granularity: str = "time",
                 open_end: bool = False) -> Mapping[str, Any] | None:
    """The admission (typed ADMISSIONS row) the image falls in, or None. A readmission on the day of a discharge
    puts a date-granular image in both: the later admission wins. With ``open_end`` an admission without a dischtime
    begun by the image competes as if it held it (it may): a returned row with a blank dischtime means the image's
    admission is unknown, while a later-begun admission that holds the image still wins."""
    ranked = containing(dataclasses.replace(ADMISSION_INTERVAL, granularity=granularity), image, admissions, open_end)
    return ranked[0] if ranked else None


def icu_stay_of(image: mimic.Image, icustays: Iterable[Mapping[str, Any]],
                granularity: str = "time") -> Mapping[str, Any] | None:
    """The ICU stay (typed ICUSTAYS row) the image falls in, or None; ties as admission_of."""
    ranked = containing(dataclasses.replace(ICU_INTERVAL, granularity=granularity), image, icustays)
    return ranked[0] if ranked else None


# --------------------------------------------------------------------------------------------------------------
# Raw variables, known at the image's time (§C.1)

MISSING = "missing"
VIEWS: tuple[str, ...] = ("PA", "LATERAL", "AP", "LL")  # the original's column order
ORIENTATIONS: tuple[str, ...] = ("Erect", "Recumbent")
GENDERS: tuple[str, ...] = ("M", "F")

AGE_R5_EDGES: tuple[float, ...] = (0, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90, math.inf)
AGE_R5_LABELS: tuple[str, ...] = ("<20", "20-25", "25-30", "30-35", "35-40", "40-45", "45-50", "50-55", "55-60",
                                  "60-65", "65-70", "70-75", "75-80", "80-85", "85-90", "90+")
AGE_R10_EDGES: tuple[float, ...] = (0, 20, 30, 40, 50, 60, 70, 80, 90, math.inf)
AGE_R10_LABELS: tuple[str, ...] = ("<20", "20-30", "30-40", "40-50", "50-60", "60-70", "70-80", "80-90", "90+")

DROPS: tuple[str, ...] = ("no_patient", "missing_gender", "age_not_positive")
"""Why an image gets no features (RowError.reason), in the order tested. The original drops images whose subject
has no gender (no patients row) and has no rule for an age outside its bins (pandas leaves the bins empty)."""


def age_bin(age: int, edges: tuple[float, ...], labels: tuple[str, ...]) -> str:
    """The label of the right-closed bin (edges[i], edges[i + 1]] holding age, as pandas.cut(age, edges): 20 is
    "<20", 21 is "20-25", 90 is "85-90", 91 is "90+". Ages <= 0 are in no bin: RowError age_not_positive."""
    index = bisect.bisect_left(edges, age)
    if index == 0:
        raise mimic.RowError("age_not_positive", f"age {age} is below every bin")
    return labels[index - 1]


def features(image: mimic.Image, patient: Mapping[str, Any] | None, admission: Mapping[str, Any] | None,
             icu_stay: Mapping[str, Any] | None) -> dict[str, Any]:
    """The original's raw variables of one image, each known when it was taken (typed PATIENTS row; the
    admission_of / icu_stay_of results): gender, age, ageR5, ageR10, view, orientation, in_admission (hadm_id or
    None), in_icu (stay_id or None). RowError (DROPS) when the image cannot have them.

    Age is mimic.age_at in the study's year. The original computes year(StudyDate) - (anchor_year - anchor_age),
    which moves top-coded patients (anchor_age 91) to 91 + (study year - anchor_year): an 89-year-old in an early
    study. Here they stay 91, i.e. "90+"."""
    for row in (patient, admission, icu_stay):
        if row is not None and row["subject_id"] != image.subject_id:
            raise ValueError(f"image {image.dicom_id} is of subject {image.subject_id}, a row is of "
                             f"{row['subject_id']}")
    if patient is None:
        raise mimic.RowError("no_patient", f"subject {image.subject_id} has no patients row")
    if patient["gender"] not in GENDERS:
        raise mimic.RowError("missing_gender", f"patients.gender of subject {image.subject_id} is not M or F")
    age = mimic.age_at(patient["anchor_age"], patient["anchor_year"], image.study_time.year)
    return {
        "gender": patient["gender"],
        "age": age,
        "ageR5": age_bin(age, AGE_R5_EDGES, AGE_R5_LABELS),
        "ageR10": age_bin(age, AGE_R10_EDGES, AGE_R10_LABELS),
        "view": image.view_position if image.view_position in VIEWS else MISSING,
        "orientation": image.orientation if image.orientation in ORIENTATIONS else MISSING,
        "in_admission": None if admission is None else admission["hadm_id"],
        "in_icu": None if icu_stay is None else icu_stay["stay_id"],
    }


# --------------------------------------------------------------------------------------------------------------
# Outcomes: the future of the image (§C.1, §C.3)

OUTCOMES: tuple[str, ...] = ("outcome_hospital_expire_flag", "outcome_icu_los_days")


def outcomes(admission: Mapping[str, Any] | None, icu_stay: Mapping[str, Any] | None) -> dict[str, Any]:
    """What happened after the image: whether the admission it falls in ended in death (hospital_expire_flag) and
    how long the ICU stay it falls in lasted, in days. None when the image is in no admission / stay (the original
    writes 0 for both). Named outcome_* so no writer can mistake them for features. RowError unknown_outcome when
    the admission's hospital_expire_flag is blank (nullable in MIMIC) or not 0/1: None would read as "in no
    admission" and encode would write it as alive, like a known survivor.

    LOS is (outtime - intime) in days, not icustays.los (a rounded float that the pipeline does not read)."""
    flag = None if admission is None else admission["hospital_expire_flag"]
    if admission is not None and flag not in (0, 1):
        raise mimic.RowError("unknown_outcome", f"admissions hadm_id={admission['hadm_id']} (the image's admission): "
                                                f"hospital_expire_flag is {'blank' if flag is None else flag}, not 0/1")
    return {
        "outcome_hospital_expire_flag": flag,
        "outcome_icu_los_days": None if icu_stay is None else
        (icu_stay["outtime"] - icu_stay["intime"]) / dt.timedelta(days=1),
    }


# --------------------------------------------------------------------------------------------------------------
# Encodings (§C.2)

AGE_NORM_MIN, AGE_NORM_MAX = 16, 100  # the original's hard-coded range
GENDER_COLUMNS: tuple[str, ...] = ("male", "female")
AGE_NORM_COLUMNS: tuple[str, ...] = ("age_norm",)
AGE_R5_COLUMNS = AGE_R5_LABELS
AGE_R10_COLUMNS: tuple[str, ...] = ("<20*",) + AGE_R10_LABELS[1:-1] + ("90+*",)  # "*": the labels shared with R5
VIEW_COLUMNS = VIEWS
ORIENTATION_COLUMNS = ORIENTATIONS
ICU_COLUMNS: tuple[str, ...] = ("icu", "not_icu")
VIEW_MISSING, ORIENTATION_MISSING = "view_missing", "orientation_missing"  # ours: the original imputes instead
MORTALITY_COLUMNS: tuple[str, ...] = ("alive", "died")

FEATURE_COLUMNS: tuple[str, ...] = (GENDER_COLUMNS + AGE_NORM_COLUMNS + AGE_R5_COLUMNS + AGE_R10_COLUMNS
                                    + VIEW_COLUMNS + (VIEW_MISSING,) + ORIENTATION_COLUMNS + (ORIENTATION_MISSING,)
                                    + ICU_COLUMNS)
"""encode's columns without outcomes. icu/not_icu is a feature: whether the image was taken during an ICU stay is
known when it is taken (unlike the stay's length)."""
OUTCOME_COLUMNS = MORTALITY_COLUMNS
"""encode's columns from outcomes: alive/died is the admission's eventual death, future information."""


def _one_hot(value: str, categories: tuple[str, ...], columns: tuple[str, ...]) -> dict[str, float]:
    return {column: float(value == category) for category, column in zip(categories, columns)}


def encode(features: Mapping[str, Any], outcomes: Mapping[str, Any] | None = None) -> dict[str, float]:
    """The original's float columns (FEATURE_COLUMNS order, then OUTCOME_COLUMNS when outcomes are given).

    Every one-hot group sums to 1: a missing view / orientation sets view_missing / orientation_missing (the
    original's columns are then all 0). died = the matched admission's hospital_expire_flag (outcomes refuses an
    unknown one); an image in no admission is alive, as in the original."""
    encoded = {
        **_one_hot(features["gender"], GENDERS, GENDER_COLUMNS),
        "age_norm": (features["age"] - AGE_NORM_MIN) / (AGE_NORM_MAX - AGE_NORM_MIN),
        **_one_hot(features["ageR5"], AGE_R5_LABELS, AGE_R5_COLUMNS),
        **_one_hot(features["ageR10"], AGE_R10_LABELS, AGE_R10_COLUMNS),
        **_one_hot(features["view"], VIEWS + (MISSING,), VIEW_COLUMNS + (VIEW_MISSING,)),
        **_one_hot(features["orientation"], ORIENTATIONS + (MISSING,), ORIENTATION_COLUMNS + (ORIENTATION_MISSING,)),
        "icu": float(features["in_icu"] is not None),
        "not_icu": float(features["in_icu"] is None),
    }
    if outcomes is not None:
        died = float(outcomes["outcome_hospital_expire_flag"] == 1)
        encoded.update(alive=1.0 - died, died=died)
    return encoded


# --------------------------------------------------------------------------------------------------------------
# Feature sets: the original's CSV files (§C.2)

_SOCIO_NORM = GENDER_COLUMNS + AGE_NORM_COLUMNS
_SOCIO_AGE5 = GENDER_COLUMNS + AGE_R5_COLUMNS
_SOCIO_AGE10 = GENDER_COLUMNS + AGE_R10_COLUMNS
_IMAGE_META = VIEW_COLUMNS + ORIENTATION_COLUMNS
_CLINICAL = MORTALITY_COLUMNS + ICU_COLUMNS

FEATURE_SETS: dict[str, tuple[str, ...]] = {
    # single variables (data/single-variable/)
    "meta-gender-only": GENDER_COLUMNS,
    "meta-age-norm-only": AGE_NORM_COLUMNS,
    "meta-age5-only": AGE_R5_COLUMNS,
    "meta-age10-only": AGE_R10_COLUMNS,
    "meta-view-only": VIEW_COLUMNS,
    "meta-orientation-only": ORIENTATION_COLUMNS,
    "meta-mortality-only": MORTALITY_COLUMNS,
    "meta-icu-only": ICU_COLUMNS,
    # groups (data/single-group/): socio-demographic, image metadata, clinical (= mortality + ICU)
    "socio-norm": _SOCIO_NORM,
    "socio-age5": _SOCIO_AGE5,
    "socio-age10": _SOCIO_AGE10,
    "image_meta": _IMAGE_META,
    "clinical": _CLINICAL,
    # combinations of two groups (data/combinations/)
    "socio-age-norm-image-meta": _SOCIO_NORM + _IMAGE_META,
    "socio-age-norm-clinical": _SOCIO_NORM + _CLINICAL,
    "socio-age-5-image-meta": _SOCIO_AGE5 + _IMAGE_META,
    "socio-age-5-clinical": _SOCIO_AGE5 + _CLINICAL,
    "socio-age-10-image-meta": _SOCIO_AGE10 + _IMAGE_META,
    "socio-age-10-clinical": _SOCIO_AGE10 + _CLINICAL,
    "image-meta-clinical": _IMAGE_META + _CLINICAL,
    # all three groups (data/all/)
    "all-age-norm": _SOCIO_NORM + _IMAGE_META + _CLINICAL,
    "all-age-5": _SOCIO_AGE5 + _IMAGE_META + _CLINICAL,
    "all-age-10": _SOCIO_AGE10 + _IMAGE_META + _CLINICAL,
}
"""The original's file names -> their columns in its order. Widths are the original's (all-age-norm: 13), so its
trainer's --ehr-in still fits: view_missing / orientation_missing are in no set, a missing view or orientation is
the all-zero group (view_missing = 1 - the sum of the view columns, so no information is lost)."""


def _columns(set_name: str) -> tuple[str, ...]:
    if set_name not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {set_name!r}; choose from {', '.join(FEATURE_SETS)}")
    return FEATURE_SETS[set_name]


def requires_outcomes(set_name: str) -> bool:
    """Whether the set has alive/died, so it can only be written with --include_outcomes."""
    return any(column in OUTCOME_COLUMNS for column in _columns(set_name))


def check_feature_sets(set_names: Iterable[str], include_outcomes: bool) -> None:
    """ValueError naming every unknown set, every set listed twice (each is written to its own files) and every set
    that needs outcomes when they are not included."""
    set_names = list(set_names)
    unknown = [name for name in set_names if name not in FEATURE_SETS]
    if unknown:
        raise ValueError(f"unknown feature set(s) {', '.join(unknown)}; choose from {', '.join(FEATURE_SETS)}")
    repeated = sorted({name for name in set_names if set_names.count(name) > 1})
    if repeated:
        raise ValueError(f"feature set(s) {', '.join(repeated)} listed more than once")
    future = [name for name in set_names if requires_outcomes(name)]
    if future and not include_outcomes:
        raise ValueError(f"feature set(s) {', '.join(future)} contain alive/died, the admission's eventual death "
                         f"(an outcome in the future of the image): add --include_outcomes to write them")


def feature_csv_header(set_name: str) -> list[str]:
    """The set's CSV header, as the original writes it: path, then the columns."""
    return ["path", *_columns(set_name)]


def feature_csv_line(path: str, encoded: Mapping[str, float], set_name: str) -> list:
    """One row of the set's CSV: the image path, then the set's columns of encode's output."""
    check_feature_sets([set_name], include_outcomes=all(column in encoded for column in OUTCOME_COLUMNS))
    return [path, *(encoded[column] for column in FEATURE_SETS[set_name])]
