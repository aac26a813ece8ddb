"""CXR-EHR-MSN's per-image variables, encodings and feature sets (cohort-definitions.md §C;
beam_pipeline/cohorts/cxr_ehr_features.py):

1. interval matching against a brute force written like the original's loops (timestamps compared as their text,
   dates as YYYYMMDD integers cut from the text, the last match of a file sorted by start then id winning) on a few
   hundred random per-subject worlds on a coarse grid, so exact boundaries, same-date-other-time images, open ends,
   overlaps and equal start times are frequent (each is asserted to occur); named tie cases; open ends ranked as
   holding every later image (the cohort rejects such a match);
2. age bins against pandas.cut with the original's edges and labels at every age 1..120, and each edge by hand;
3. features (top-coding, view / orientation categories, drops), outcomes (an unknown flag is refused, never
   "alive"), encodings (one-hot groups sum to 1, outcome columns only when asked);
4. the 23 feature sets against the column lists of the original's notebook, transcribed by hand; the outcome gate.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import random

import pandas as pd
import pytest

from beam_pipeline import mimic
from beam_pipeline.cohorts import cxr_ehr_features as cf

SUBJECT = 10000032
DAY0 = dt.datetime(2150, 3, 1)
HOUR, SECOND = dt.timedelta(hours=1), dt.timedelta(seconds=1)


def image(when: dt.datetime, view="PA", orientation="Erect", dicom_id="d1", subject_id=SUBJECT) -> mimic.Image:
    return mimic.Image(dicom_id=dicom_id, subject_id=subject_id, study_id=50000001, view_position=view, rows=None,
                 columns=None, study_time=when, orientation=orientation)


def admission(hadm_id, admittime, dischtime, flag=0, subject_id=SUBJECT) -> dict:
    return {"subject_id": subject_id, "hadm_id": hadm_id, "admittime": admittime, "dischtime": dischtime,
            "deathtime": None, "hospital_expire_flag": flag}


def icustay(stay_id, intime, outtime, subject_id=SUBJECT) -> dict:
    return {"subject_id": subject_id, "hadm_id": 20000000 + stay_id, "stay_id": stay_id, "intime": intime,
            "outtime": outtime}


def patient(gender="F", anchor_age=52, anchor_year=2150, subject_id=SUBJECT) -> dict:
    return {"subject_id": subject_id, "gender": gender, "anchor_age": anchor_age, "anchor_year": anchor_year,
            "dod": None}


# --------------------------------------------------------------------------------------------------------------
# 1. Interval matching

def brute_force(when: dt.datetime, subject_id: int, rows: list[dict], start: str, end: str, key: str,
                granularity: str, open_end: bool = False) -> dict | None:
    """The original's loop over a file sorted by (start, key): the last row whose text interval holds the image.
    ``open_end``: a row without an end ends at the end of time (a text after every timestamp)."""
    text = lambda value: "9999-12-31 23:59:59" if value is None else mimic.format_datetime(value)  # noqa: E731
    match = None
    for row in sorted(rows, key=lambda r: (text(r[start]), r[key])):
        if row["subject_id"] != subject_id or (row[end] is None and not open_end):
            continue
        if granularity == "date":
            day = int(when.strftime("%Y%m%d"))
            inside = int(text(row[start])[:10].replace("-", "")) <= day <= int(text(row[end])[:10].replace("-", ""))
        else:
            inside = text(row[start]) <= text(when) <= text(row[end])
        if inside:
            match = row
    return match


GRID = [DAY0 + day * dt.timedelta(days=1) + hours * HOUR for day in range(4) for hours in (0, 6, 12, 18)]


def random_world(rng: random.Random):
    """Admissions and ICU stays on a 6-hourly grid over four days (some of another subject, some without an end),
    and images on the grid, a second off it, or late at night."""
    admissions, stays = [], []
    for n in range(rng.randint(0, 5)):
        start = rng.choice(GRID)
        end = None if rng.random() < 0.1 else start + rng.choice([0, 6, 12, 24, 42]) * HOUR
        subject = SUBJECT if rng.random() < 0.9 else SUBJECT + 1
        hadm_id = rng.choice([21000000 + n, 29000000 - n])
        admissions.append(admission(hadm_id, start, end, rng.randint(0, 1), subject))
    for n in range(rng.randint(0, 4)):
        start = rng.choice(GRID)
        stays.append(icustay(rng.choice([31000000 + n, 39000000 - n]), start, start + rng.choice([0, 6, 30]) * HOUR,
                             SUBJECT if rng.random() < 0.9 else SUBJECT + 1))
    images = [image(rng.choice(GRID) + rng.choice([dt.timedelta(0), SECOND, -SECOND, 23 * HOUR + 59 * 60 * SECOND]))
              for _ in range(6)]
    return admissions, stays, images


def test_matching_vs_brute_force():
    rng = random.Random(15)
    seen = set()
    for _ in range(400):
        admissions, stays, images = random_world(rng)
        rng.shuffle(admissions)  # file order must not matter
        for img, granularity in itertools.product(images, cf.GRANULARITIES):
            for rows, interval, ours in (
                    (admissions, cf.ADMISSION_INTERVAL, cf.admission_of(img, admissions, granularity)),
                    (stays, cf.ICU_INTERVAL, cf.icu_stay_of(img, stays, granularity))):
                expected = brute_force(img.study_time, img.subject_id, rows, interval.start, interval.end,
                                       interval.key, granularity)
                assert ours == expected, (granularity, img.study_time, rows)
                matches = [r for r in rows if r["subject_id"] == SUBJECT and r[interval.end] is not None and (
                    r[interval.start] <= img.study_time <= r[interval.end] if granularity == "time" else
                    r[interval.start].date() <= img.study_time.date() <= r[interval.end].date())]
                seen.add(f"{granularity}:{len(matches) > 1 and 'tie' or len(matches)}")
                if any(img.study_time in (r[interval.start], r[interval.end]) for r in matches):
                    seen.add(f"{granularity}:exact_boundary")
                if any(r[interval.end] is None and r["subject_id"] == SUBJECT for r in rows):
                    seen.add("open_end")
                if len({r[interval.start] for r in matches}) < len(matches):
                    seen.add(f"{granularity}:equal_start")
                if granularity == "date" and expected and not (
                        expected[interval.start] <= img.study_time <= expected[interval.end]):
                    seen.add("date:same_date_other_time")
    assert seen >= {"time:0", "time:1", "time:tie", "time:exact_boundary", "time:equal_start", "date:0", "date:1",
                    "date:tie", "date:exact_boundary", "date:equal_start", "date:same_date_other_time", "open_end"}


def test_open_end_matching_vs_brute_force():
    """With open_end, an admission without a dischtime competes for every image from its admittime on (the cohort
    then rejects the image: its admission is unknown); the tie rule is unchanged."""
    rng = random.Random(16)
    seen = set()
    for _ in range(400):
        admissions, _, images = random_world(rng)
        for img, granularity in itertools.product(images, cf.GRANULARITIES):
            ours = cf.admission_of(img, admissions, granularity, open_end=True)
            assert ours == brute_force(img.study_time, img.subject_id, admissions, "admittime", "dischtime",
                                       "hadm_id", granularity, open_end=True), (granularity, img.study_time)
            closed = cf.admission_of(img, admissions, granularity)
            seen.add("open_chosen" if ours and ours["dischtime"] is None else
                     "closed_wins_over_open" if ours and ours is closed and any(
                         a["dischtime"] is None and a["subject_id"] == SUBJECT and a["admittime"] <= img.study_time
                         for a in admissions) else "other")
    assert seen == {"open_chosen", "closed_wins_over_open", "other"}


@pytest.mark.parametrize("granularity, when, chosen", [
    ("time", DAY0 + 8 * HOUR - SECOND, None), ("time", DAY0 + 8 * HOUR, "open"), ("time", DAY0 + 60 * HOUR, "later"),
    ("time", DAY0 + 79 * HOUR, "open"), ("time", DAY0 + 900 * HOUR, "open"),
    ("date", DAY0, "open"), ("date", DAY0 - SECOND, None), ("date", DAY0 + 55 * HOUR, "later")])
def test_open_end_named_cases(granularity, when, chosen):
    """An open admission from day 0, 08:00 and a complete one from day 2, 08:00 to day 3, 06:00: the open one may
    hold every image from its start on (date: from its day on), the complete one outranks it where it holds the image
    (it began later)."""
    rows = {"open": admission(21000001, DAY0 + 8 * HOUR, None),
            "later": admission(21000002, DAY0 + 56 * HOUR, DAY0 + 78 * HOUR)}
    got = cf.admission_of(image(when), list(rows.values()), granularity, open_end=True)
    assert got is (rows[chosen] if chosen else None)
    assert cf.admission_of(image(when), [rows["open"]], granularity) is None  # by default it holds nothing


def test_both_ends_inclusive_at_the_second():
    adm = admission(21000001, DAY0 + 8 * HOUR, DAY0 + 30 * HOUR)
    for when, inside in ((DAY0 + 8 * HOUR - SECOND, False), (DAY0 + 8 * HOUR, True), (DAY0 + 30 * HOUR, True),
                         (DAY0 + 30 * HOUR + SECOND, False)):
        assert (cf.admission_of(image(when), [adm]) is adm) is inside
    # date granularity: the whole admission and discharge days, midnight to midnight
    assert cf.admission_of(image(DAY0), [adm], "date") is adm
    assert cf.admission_of(image(DAY0 + 47 * HOUR + 59 * 60 * SECOND), [adm], "date") is adm
    assert cf.admission_of(image(DAY0 + 48 * HOUR), [adm], "date") is None
    assert cf.admission_of(image(DAY0 - SECOND), [adm], "date") is None


def test_tie_rule():
    discharged = admission(29000000, DAY0, DAY0 + 50 * HOUR)  # leaves on day 2 at 02:00
    readmitted = admission(21000000, DAY0 + 52 * HOUR, DAY0 + 100 * HOUR)  # back on day 2 at 04:00
    morning = image(DAY0 + 49 * HOUR)
    assert cf.admission_of(morning, [readmitted, discharged]) is discharged  # time: only the first holds it
    for order in ([readmitted, discharged], [discharged, readmitted]):
        assert cf.admission_of(morning, order, "date") is readmitted  # date: both; the later admittime wins
        assert cf.containing(dataclasses.replace(cf.ADMISSION_INTERVAL, granularity="date"), morning,
                             order) == [readmitted, discharged]
    # same admittime: the larger hadm_id, whatever the file order
    twins = [admission(21000000, DAY0, DAY0 + 10 * HOUR), admission(22000000, DAY0, DAY0 + 5 * HOUR)]
    for order in (twins, twins[::-1]):
        assert cf.admission_of(image(DAY0 + HOUR), order)["hadm_id"] == 22000000
    # ICU stays: same rule on intime / stay_id; the end time does not matter
    stays = [icustay(31000000, DAY0, DAY0 + 99 * HOUR), icustay(30000000, DAY0 + HOUR, DAY0 + 2 * HOUR)]
    assert cf.icu_stay_of(image(DAY0 + HOUR), stays)["stay_id"] == 30000000


def test_open_end_other_subject_and_bad_granularity():
    when = DAY0 + HOUR
    assert cf.admission_of(image(when), [admission(21000000, DAY0, None)]) is None
    assert cf.admission_of(image(when), [admission(21000000, DAY0, DAY0 + 2 * HOUR, subject_id=SUBJECT + 1)]) is None
    with pytest.raises(ValueError, match="granularity"):
        cf.admission_of(image(when), [], "day")
    assert cf.ICU_INTERVAL.as_dict() == {
        "start": "intime", "end": "outtime", "key": "stay_id", "granularity": "time",
        "rule": "intime ≤ t ≤ outtime (compared as times, both ends inclusive; several: latest intime, then "
                "largest stay_id)"}


# --------------------------------------------------------------------------------------------------------------
# 2. Age bins

def test_age_bins_match_pandas_cut():
    ages = list(range(1, 121))
    for edges, labels in ((cf.AGE_R5_EDGES, cf.AGE_R5_LABELS), (cf.AGE_R10_EDGES, cf.AGE_R10_LABELS)):
        expected = pd.cut(pd.Series(ages, dtype=float), list(edges), labels=list(labels))  # right=True
        assert [cf.age_bin(age, edges, labels) for age in ages] == list(expected.astype(str))


@pytest.mark.parametrize("age, r5, r10", [
    (1, "<20", "<20"), (19, "<20", "<20"), (20, "<20", "<20"), (21, "20-25", "20-30"), (25, "20-25", "20-30"),
    (26, "25-30", "20-30"), (30, "25-30", "20-30"), (31, "30-35", "30-40"), (85, "80-85", "80-90"),
    (86, "85-90", "80-90"), (89, "85-90", "80-90"), (90, "85-90", "80-90"), (91, "90+", "90+"),
    (120, "90+", "90+")])
def test_age_bin_edges(age, r5, r10):
    assert cf.age_bin(age, cf.AGE_R5_EDGES, cf.AGE_R5_LABELS) == r5
    assert cf.age_bin(age, cf.AGE_R10_EDGES, cf.AGE_R10_LABELS) == r10


@pytest.mark.parametrize("age", [0, -3])
def test_age_outside_the_bins(age):
    with pytest.raises(mimic.RowError) as err:
        cf.age_bin(age, cf.AGE_R5_EDGES, cf.AGE_R5_LABELS)
    assert err.value.reason == "age_not_positive"


# --------------------------------------------------------------------------------------------------------------
# 3. Features, outcomes, encodings

def test_features():
    adm, stay = admission(21000001, DAY0, DAY0 + 48 * HOUR), icustay(31000001, DAY0, DAY0 + 36 * HOUR)
    got = cf.features(image(DAY0 + 3 * HOUR), patient("F", 52, 2148), adm, stay)
    assert got == {"gender": "F", "age": 54, "ageR5": "50-55", "ageR10": "50-60", "view": "PA",
                   "orientation": "Erect", "in_admission": 21000001, "in_icu": 31000001}
    assert cf.features(image(DAY0, view="LL", orientation="Recumbent"), patient("M"), None, None) == {
        "gender": "M", "age": 52, "ageR5": "50-55", "ageR10": "50-60", "view": "LL", "orientation": "Recumbent",
        "in_admission": None, "in_icu": None}


@pytest.mark.parametrize("view, orientation, want", [
    ("", "", ("missing", "missing")), ("PA LLD", "Erect", ("missing", "Erect")),
    ("LATERAL", "Supine", ("LATERAL", "missing")), ("AP", "", ("AP", "missing")), ("pa", "erect", ("missing",) * 2)])
def test_other_and_blank_views_and_orientations_are_missing(view, orientation, want):
    got = cf.features(image(DAY0, view=view, orientation=orientation), patient(), None, None)
    assert (got["view"], got["orientation"]) == want


def test_top_coded_age_stays_91():
    """anchor_age 91 in anchor_year 2152, study in 2150: the original's 2150 - (2152 - 91) = 89 ("85-90")."""
    got = cf.features(image(DAY0), patient(anchor_age=91, anchor_year=2152), None, None)
    assert (got["age"], got["ageR5"], got["ageR10"]) == (91, "90+", "90+")
    got = cf.features(image(DAY0), patient(anchor_age=89, anchor_year=2152), None, None)
    assert (got["age"], got["ageR5"]) == (87, "85-90")


@pytest.mark.parametrize("pat, reason", [
    (None, "no_patient"), (patient(gender=None), "missing_gender"), (patient(gender=""), "missing_gender"),
    (patient(anchor_age=18, anchor_year=2170), "age_not_positive")])
def test_drops(pat, reason):
    with pytest.raises(mimic.RowError) as err:
        cf.features(image(DAY0), pat, None, None)
    assert err.value.reason == reason and reason in cf.DROPS


def test_rows_of_another_subject_are_a_bug():
    with pytest.raises(ValueError, match="subject"):
        cf.features(image(DAY0), patient(), admission(1, DAY0, DAY0, subject_id=SUBJECT + 1), None)


def test_outcomes():
    adm, stay = admission(21000001, DAY0, DAY0 + 48 * HOUR, flag=1), icustay(31000001, DAY0, DAY0 + 36 * HOUR)
    assert cf.outcomes(adm, stay) == {"outcome_hospital_expire_flag": 1, "outcome_icu_los_days": 1.5}
    assert cf.outcomes(None, None) == {"outcome_hospital_expire_flag": None, "outcome_icu_los_days": None}
    assert set(cf.outcomes(adm, stay)) == set(cf.OUTCOMES)
    assert not set(cf.OUTCOMES) & set(cf.features(image(DAY0), patient(), adm, stay))


@pytest.mark.parametrize("flag", [None, 2, -1])
def test_an_unknown_outcome_is_refused_never_alive(flag):
    """hospital_expire_flag is nullable in MIMIC: a blank (or non-0/1) flag of the image's admission must not reach
    encode, which writes None as alive=1 (the original's value for an image in no admission)."""
    with pytest.raises(mimic.RowError) as err:
        cf.outcomes(admission(21000001, DAY0, DAY0 + 48 * HOUR, flag=flag), None)
    assert err.value.reason == "unknown_outcome" and "hadm_id=21000001" in err.value.detail
    assert cf.outcomes(None, icustay(31000001, DAY0, DAY0 + 36 * HOUR))["outcome_hospital_expire_flag"] is None


GROUPS = (cf.GENDER_COLUMNS, cf.AGE_R5_COLUMNS, cf.AGE_R10_COLUMNS, cf.VIEW_COLUMNS + (cf.VIEW_MISSING,),
          cf.ORIENTATION_COLUMNS + (cf.ORIENTATION_MISSING,), cf.ICU_COLUMNS)


def test_encode_one_hot_groups_sum_to_one():
    for gender, anchor_age, view, orientation, in_icu in itertools.product(
            cf.GENDERS, range(1, 101), cf.VIEWS + ("",), cf.ORIENTATIONS + ("",), (None, 31000001)):
        feats = cf.features(image(DAY0, view=view, orientation=orientation), patient(gender, anchor_age, 2150),
                            None, None if in_icu is None else icustay(in_icu, DAY0, DAY0))
        encoded = cf.encode(feats)
        assert tuple(encoded) == cf.FEATURE_COLUMNS
        for group in GROUPS:
            assert sum(encoded[c] for c in group) == 1.0 and {encoded[c] for c in group} == {0.0, 1.0}
        assert encoded["age_norm"] == (min(anchor_age, 91) - 16) / 84


def test_encode_by_hand():
    feats = {"gender": "M", "age": 58, "ageR5": "55-60", "ageR10": "50-60", "view": "missing",
             "orientation": "Recumbent", "in_admission": 21000001, "in_icu": None}
    ones = {"male", "55-60", "50-60", "view_missing", "Recumbent", "not_icu"}
    assert cf.encode(feats) == {c: (0.5 if c == "age_norm" else float(c in ones)) for c in cf.FEATURE_COLUMNS}
    for flag, alive, died in ((1, 0.0, 1.0), (0, 1.0, 0.0), (None, 1.0, 0.0)):  # no admission: alive, as upstream
        encoded = cf.encode(feats, {"outcome_hospital_expire_flag": flag, "outcome_icu_los_days": None})
        assert tuple(encoded) == cf.FEATURE_COLUMNS + cf.OUTCOME_COLUMNS
        assert (encoded["alive"], encoded["died"]) == (alive, died)
    assert not set(cf.OUTCOME_COLUMNS) & set(cf.encode(feats))


# --------------------------------------------------------------------------------------------------------------
# 4. Feature sets

R5 = ['<20', '20-25', '25-30', '30-35', '35-40', '40-45', '45-50', '50-55', '55-60', '60-65', '65-70', '70-75',
      '75-80', '80-85', '85-90', '90+']
R10 = ['<20*', '20-30', '30-40', '40-50', '50-60', '60-70', '70-80', '80-90', '90+*']
META = ['PA', 'LATERAL', 'AP', 'LL', 'Erect', 'Recumbent']
CLIN = ['alive', 'died', 'icu', 'not_icu']
ORIGINAL = {  # EHR-data-prep.ipynb, the column lists of its to_csv calls without 'path'
    "meta-gender-only": ['male', 'female'], "meta-age-norm-only": ['age_norm'], "meta-age5-only": R5,
    "meta-age10-only": R10, "meta-view-only": ['PA', 'LATERAL', 'AP', 'LL'], "meta-orientation-only":
    ['Erect', 'Recumbent'], "meta-mortality-only": ['alive', 'died'], "meta-icu-only": ['icu', 'not_icu'],
    "socio-norm": ['male', 'female', 'age_norm'], "socio-age5": ['male', 'female'] + R5,
    "socio-age10": ['male', 'female'] + R10, "image_meta": META, "clinical": CLIN,
    "socio-age-norm-image-meta": ['male', 'female', 'age_norm'] + META,
    "socio-age-norm-clinical": ['male', 'female', 'age_norm'] + CLIN,
    "socio-age-5-image-meta": ['male', 'female'] + R5 + META, "socio-age-5-clinical": ['male', 'female'] + R5 + CLIN,
    "socio-age-10-image-meta": ['male', 'female'] + R10 + META,
    "socio-age-10-clinical": ['male', 'female'] + R10 + CLIN, "image-meta-clinical": META + CLIN,
    "all-age-norm": ['male', 'female', 'age_norm'] + META + CLIN, "all-age-5": ['male', 'female'] + R5 + META + CLIN,
    "all-age-10": ['male', 'female'] + R10 + META + CLIN,
}


def test_feature_sets_are_the_originals():
    assert {name: list(columns) for name, columns in cf.FEATURE_SETS.items()} == ORIGINAL
    assert list(cf.FEATURE_SETS) == list(ORIGINAL)  # the notebook's order of files
    widths = {name: len(columns) for name, columns in cf.FEATURE_SETS.items()}
    assert (widths["all-age-norm"], widths["all-age-5"], widths["all-age-10"]) == (13, 28, 21)
    every = set(cf.FEATURE_COLUMNS + cf.OUTCOME_COLUMNS)
    for columns in cf.FEATURE_SETS.values():
        assert set(columns) <= every and len(set(columns)) == len(columns)
    assert not {cf.VIEW_MISSING, cf.ORIENTATION_MISSING} & set(itertools.chain(*cf.FEATURE_SETS.values()))


def test_outcome_sets_are_gated():
    needing = {name for name in cf.FEATURE_SETS if cf.requires_outcomes(name)}
    assert needing == {"meta-mortality-only", "clinical", "socio-age-norm-clinical", "socio-age-5-clinical",
                       "socio-age-10-clinical", "image-meta-clinical", "all-age-norm", "all-age-5", "all-age-10"}
    cf.check_feature_sets(["socio-norm", "meta-icu-only", "image_meta"], include_outcomes=False)
    cf.check_feature_sets(list(cf.FEATURE_SETS), include_outcomes=True)
    with pytest.raises(ValueError, match="clinical, all-age-5 contain alive/died.*--include_outcomes"):
        cf.check_feature_sets(["socio-norm", "clinical", "all-age-5"], include_outcomes=False)
    with pytest.raises(ValueError, match="unknown feature set.*socio-age-norm"):
        cf.check_feature_sets(["socio-age-norm"], include_outcomes=True)
    with pytest.raises(ValueError, match="unknown feature set"):
        cf.requires_outcomes("all")
    with pytest.raises(ValueError, match="^feature set\\(s\\) image_meta, socio-norm listed more than once$"):
        cf.check_feature_sets(["socio-norm", "image_meta", "socio-norm", "image_meta"], include_outcomes=False)


def test_feature_csv_lines():
    feats = cf.features(image(DAY0, view="AP", orientation=""), patient("F", 58, 2150), None,
                        icustay(31000001, DAY0, DAY0 + HOUR))
    encoded = cf.encode(feats)
    assert cf.feature_csv_header("socio-norm") == ["path", "male", "female", "age_norm"]
    assert cf.feature_csv_line("files/a.jpg", encoded, "socio-norm") == ["files/a.jpg", 0.0, 1.0, 0.5]
    assert cf.feature_csv_line("files/a.jpg", encoded, "image_meta") == ["files/a.jpg", 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="--include_outcomes"):
        cf.feature_csv_line("files/a.jpg", encoded, "all-age-norm")
    full = cf.encode(feats, cf.outcomes(admission(21000001, DAY0, DAY0 + HOUR, flag=1), None))
    line = cf.feature_csv_line("files/a.jpg", full, "all-age-norm")
    assert line == ["files/a.jpg", 0.0, 1.0, 0.5, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert len(line) == 1 + 13 == len(cf.feature_csv_header("all-age-norm"))
