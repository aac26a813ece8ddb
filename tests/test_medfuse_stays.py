"""MedFuse's stays, labels, splits and CXR pairing (cohort-definitions.md §B; beam_pipeline/cohorts/medfuse_stays.py):

1. a brute force written from §B's wording (upstream's filter order, dates compared as dates, windows as datetime
   bounds), independent of ``transforms/windows.py``, against the module on a few hundred random per-subject worlds
   on a coarse time grid, so year boundaries, exact 48 h / outtime bounds, ±1 s around them, deaths on the
   admission / discharge dates and equal StudyDateTimes are frequent (each is asserted to occur);
2. named edge cases, one small explicit world each;
3. phenotype labels on real codes of phenotype_codes.csv and the label order; splits on subjects of each file;
4. the real MIMIC-IV demo (icustays, admissions, patients, diagnoses_icd), typed with the module's tables and
   compared with a pandas re-implementation of upstream's extract_subjects_iv (with the age fix). Skipped only when
   ``../shared/open-data`` is not beside the repo (a user clone).
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from beam_pipeline import mimic
from beam_pipeline.cohorts import medfuse_stays as ms
from beam_pipeline.cohorts.medfuse_stays import (PHENOTYPES, Stay, ihm_eligible, in_hospital_mortality,
                                                 load_split_files, pair_cxr, pairing_window, phenotype_labels,
                                                 select_stays, subject_split)
from beam_pipeline.mimic import ADMISSIONS, DIAGNOSES_ICD, ICUSTAYS, PATIENTS
from beam_pipeline.transforms.split import hash_split

HOUR, SECOND = dt.timedelta(hours=1), dt.timedelta(seconds=1)
SUBJECT = 10000032
T0 = dt.datetime(2150, 3, 1, 8, 0, 0)
PACKAGED = Path(ms.__file__).resolve().parent.parent / "resources" / "medfuse_splits"
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "medfuse"
IV_DEMO = Path(__file__).resolve().parents[2] / "shared" / "open-data" / "mimic-iv-demo-2.2"
needs_demo = pytest.mark.skipif(not IV_DEMO.is_dir(), reason="the MIMIC-IV demo (../shared/open-data) is not beside "
                                                              "this clone")


# --------------------------------------------------------------------------------------------------------------
# Rows, typed the way the readers type them

def text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S") + (f".{value.microsecond:06d}" if value.microsecond else "")
    return str(value)


def typed(table: mimic.Table, **values) -> dict:
    raw = dict.fromkeys(table.header, "")
    raw.update({k: text(v) for k, v in values.items()})
    return mimic.type_row(table, raw)


def icustay(stay_id, hadm_id, intime, outtime, first="MICU", last=None, subject_id=SUBJECT) -> dict:
    return typed(ICUSTAYS, subject_id=subject_id, hadm_id=hadm_id, stay_id=stay_id, first_careunit=first,
                 last_careunit=first if last is None else last, intime=intime, outtime=outtime,
                 los=(outtime - intime) / dt.timedelta(days=1))


def admission(hadm_id, admittime, dischtime, deathtime=None, subject_id=SUBJECT) -> dict:
    return typed(ADMISSIONS, subject_id=subject_id, hadm_id=hadm_id, admittime=admittime, dischtime=dischtime,
                 deathtime=deathtime)


def patient(anchor_age=60, anchor_year=2150, dod: dt.date | None = None, subject_id=SUBJECT) -> dict:
    return typed(PATIENTS, subject_id=subject_id, gender="F", anchor_age=anchor_age, anchor_year=anchor_year,
                 anchor_year_group="2011 - 2013", dod=None if dod is None else dod.isoformat())


def image(dicom_id: str, study_time: dt.datetime, view="AP", subject_id=SUBJECT) -> mimic.Image:
    return mimic.Image(dicom_id=dicom_id, subject_id=subject_id, study_id=50000000, view_position=view, rows=None,
                       columns=None, study_time=study_time)


def stay_of(intime: dt.datetime, hours: float, stay_id=30000001, hadm_id=20000001) -> Stay:
    return Stay(SUBJECT, hadm_id, stay_id, intime, intime + hours * HOUR, hours, 60)


# --------------------------------------------------------------------------------------------------------------
# Brute force, from §B's wording

def brute_stays(icu: list[dict], adm: list[dict], pat: list[dict]) -> tuple[dict[int, int], Counter]:
    """Upstream's extract_subjects_iv step by step -> ({stay_id: age}, stays lost at each step)."""
    steps = [("unit_transfer", lambda s, kept: s["first_careunit"] == s["last_careunit"]),
             ("no_admission", lambda s, kept: any((a["subject_id"], a["hadm_id"]) == (s["subject_id"], s["hadm_id"])
                                                  for a in adm)),
             ("no_patient", lambda s, kept: any(p["subject_id"] == s["subject_id"] for p in pat)),
             ("several_icu_stays", lambda s, kept: [t["hadm_id"] for t in kept].count(s["hadm_id"]) == 1),
             ("under_18", lambda s, kept: age_of(s) >= 18)]

    def age_of(s):
        p = next(p for p in pat if p["subject_id"] == s["subject_id"])
        return 91 if p["anchor_age"] == 91 else p["anchor_age"] + s["intime"].year - p["anchor_year"]

    kept, lost = list(icu), Counter()
    for reason, keep in steps:
        after = [s for s in kept if keep(s, kept)]
        if len(after) < len(kept):
            lost[reason] = len(kept) - len(after)
        kept = after
    return {s["stay_id"]: age_of(s) for s in kept}, lost


def brute_mortality(adm: dict, pat: dict) -> int:
    """deathtime within [admittime, dischtime], or the dod *date* within it: on or after the admission date (on it
    only when admitted exactly at midnight) and on or before the discharge date."""
    admit, disch, death, dod = adm["admittime"], adm["dischtime"], adm["deathtime"], pat["dod"]
    if disch is None:
        return 0
    by_deathtime = death is not None and admit <= death <= disch
    by_dod = False
    if dod is not None:
        day = dt.date.fromisoformat(str(dod))
        by_dod = (day > admit.date() or (day == admit.date() and admit.time() == dt.time(0))) and day <= disch.date()
    return int(by_deathtime or by_dod)


def brute_pair(stay: Stay, images: list[mimic.Image], task: str) -> mimic.Image | None:
    end = stay.intime + 48 * HOUR if task == "ihm" else stay.outtime
    inside = [im for im in images if im.view_position == "AP" and stay.intime <= im.study_time <= end]
    if not inside:
        return None
    latest = max(im.study_time for im in inside)
    return min((im for im in inside if im.study_time == latest), key=lambda im: im.dicom_id)


# --------------------------------------------------------------------------------------------------------------
# 1. Random worlds

def random_world(rng: random.Random):
    """One subject: maybe a patient row, 1-3 admissions (some missing), 0-3 ICU stays each, deaths and X-rays on a
    grid that makes every bound and tie likely."""
    anchor_year = 2150
    pat = [] if rng.random() < 0.08 else [patient(rng.choice([16, 17, 18, 19, 60, 91]), anchor_year,
                                                  None)]
    adm, icu, images = [], [], []
    stay_id = 30000000
    for k in range(rng.randint(1, 3)):
        hadm_id = 20000000 + k
        # near a new year, so the stay's year and the anchor year differ often
        admittime = (dt.datetime(anchor_year + rng.choice([-1, 0, 1]), 1, 1) + rng.choice([-30, -6, 0, 5]) * HOUR
                     + rng.choice([0, 0, 30]) * dt.timedelta(minutes=1))
        if rng.random() < 0.15:
            admittime = admittime.replace(hour=0, minute=0)  # admitted exactly at midnight
        intime = admittime + rng.choice([0, 2, 20]) * HOUR
        end = intime
        for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
            stay_id += 1
            hours = rng.choice([0, 12, 47, 48, 49, 96]) * HOUR + rng.choice([-SECOND, dt.timedelta(0), SECOND])
            hours = max(hours, dt.timedelta(0))
            first = rng.choice(["MICU", "SICU"])
            last = first if rng.random() < 0.75 else rng.choice(["MICU", "SICU", "CCU"])
            outtime = intime + hours
            icu.append(icustay(stay_id, hadm_id, intime, outtime, first, last))
            offsets = [-SECOND, dt.timedelta(0), 24 * HOUR, 48 * HOUR, 48 * HOUR + SECOND, hours, hours + SECOND]
            for n in range(rng.randint(0, 5)):
                images.append(image(rng.choice(["a", "b", "c", "d"]) + f"{stay_id}-{n}" * (rng.random() < 0.5),
                                    intime + rng.choice(offsets), rng.choice(["AP", "AP", "PA", "LATERAL"])))
            end = max(end, outtime)
            intime = outtime + rng.choice([1, 30]) * HOUR
        dischtime = None if rng.random() < 0.03 else end + rng.choice([0, 5, 30]) * HOUR
        deathtime = None
        if dischtime is not None and rng.random() < 0.3:
            deathtime = rng.choice([dischtime, dischtime + SECOND, admittime, admittime - SECOND,
                                    admittime + 10 * HOUR])
        if rng.random() < 0.9:  # else the stays have no admission row
            adm.append(admission(hadm_id, admittime, dischtime, deathtime))
    if pat and rng.random() < 0.5 and adm:
        a = rng.choice(adm)
        anchor = (a["dischtime"] or a["admittime"]).date()
        day = rng.choice([a["admittime"].date() - dt.timedelta(days=1), a["admittime"].date(), anchor,
                          anchor + dt.timedelta(days=1)])
        pat[0] = patient(pat[0]["anchor_age"], anchor_year, day)
    return icu, adm, pat, images


def test_random_worlds_match_the_brute_force():
    rng = random.Random(14)
    seen = Counter()
    for _ in range(600):
        icu, adm, pat, images = random_world(rng)
        rng.shuffle(icu)
        stays, drops = select_stays(icu, adm, pat)
        expected, lost = brute_stays(icu, adm, pat)
        assert {s.stay_id: s.age for s in stays} == expected
        assert drops == lost
        assert [s.stay_id for s in stays] == sorted(expected)
        seen.update(drops)
        admissions = {a["hadm_id"]: a for a in adm}
        for stay in stays:
            row = next(r for r in icu if r["stay_id"] == stay.stay_id)
            assert (stay.intime, stay.outtime) == (row["intime"], row["outtime"])
            assert stay.los_hours == pytest.approx((row["outtime"] - row["intime"]).total_seconds() / 3600, abs=1e-9)
            assert ihm_eligible(stay) == (row["outtime"] - row["intime"] >= 48 * HOUR)
            label = in_hospital_mortality(stay, admissions[stay.hadm_id], pat[0])
            assert label == brute_mortality(admissions[stay.hadm_id], pat[0])
            seen["mortality"] += label
            p = pat[0]
            seen["age_differs_from_anchor_age"] += stay.age != p["anchor_age"]
            if p["dod"] and dt.date.fromisoformat(str(p["dod"])) == admissions[stay.hadm_id]["admittime"].date():
                seen["dod_on_admission_date"] += 1
            if p["dod"] and admissions[stay.hadm_id]["dischtime"] and (
                    dt.date.fromisoformat(str(p["dod"])) == admissions[stay.hadm_id]["dischtime"].date()):
                seen["dod_on_discharge_date"] += 1
            for task in ms.TASKS:
                got = pair_cxr(stay, images, task)
                assert got == brute_pair(stay, images, task)
                if got is not None:
                    seen[f"paired/{task}"] += 1
                    delta = got.study_time - stay.intime
                    seen[f"paired_at_bound/{task}"] += delta == (48 * HOUR if task == "ihm" else stay.outtime
                                                                 - stay.intime)
                    seen[f"paired_at_intime/{task}"] += delta == dt.timedelta(0)
                    seen[f"tie/{task}"] += sum(im.study_time == got.study_time and im.view_position == "AP"
                                               for im in images) > 1
    for name in (*ms.STAY_DROPS, "mortality", "age_differs_from_anchor_age", "dod_on_admission_date",
                 "dod_on_discharge_date", *(f"{what}/{task}" for what in ("paired", "paired_at_bound",
                                                                          "paired_at_intime", "tie")
                                            for task in ms.TASKS)):
        assert seen[name] > 0, (name, seen)


# --------------------------------------------------------------------------------------------------------------
# 2. Named edge cases: stays

def test_a_unit_transfer_is_dropped_and_does_not_count_as_a_second_stay():
    icu = [icustay(30000001, 20000001, T0, T0 + 50 * HOUR, "MICU", "SICU"),  # transfer
           icustay(30000002, 20000001, T0 + 60 * HOUR, T0 + 70 * HOUR, "CCU", "CCU")]
    stays, drops = select_stays(icu, [admission(20000001, T0 - HOUR, T0 + 80 * HOUR)], [patient()])
    # upstream order: transfers are filtered first, so the admission has exactly one (single-unit) stay left
    assert [s.stay_id for s in stays] == [30000002]
    assert drops == Counter(unit_transfer=1)


def test_two_icu_stays_in_one_admission_drop_both():
    icu = [icustay(30000001, 20000001, T0, T0 + 50 * HOUR), icustay(30000002, 20000001, T0 + 60 * HOUR,
                                                                     T0 + 70 * HOUR, "SICU"),
           icustay(30000003, 20000002, T0 + 200 * HOUR, T0 + 210 * HOUR)]
    adm = [admission(20000001, T0 - HOUR, T0 + 80 * HOUR), admission(20000002, T0 + 199 * HOUR, T0 + 220 * HOUR)]
    stays, drops = select_stays(icu, adm, [patient()])
    assert [s.stay_id for s in stays] == [30000003]
    assert drops == Counter(several_icu_stays=2)


def test_a_set_aside_stay_counts_towards_its_admission_when_every_version_does():
    """Stay 1's versions: single-unit in 20000001 (both) -> counted; stay 2's: 20000002 or 20000003 -> undecided
    for both; stay 3's: a transfer or single-unit in 20000004 -> undecided; stay 4's: transfers only -> neither."""
    versions = {30000001: [icustay(30000001, 20000001, T0, T0 + HOUR), icustay(30000001, 20000001, T0, T0 + 2 * HOUR)],
                30000002: [icustay(30000002, 20000002, T0, T0 + HOUR), icustay(30000002, 20000003, T0, T0 + HOUR)],
                30000003: [icustay(30000003, 20000004, T0, T0 + HOUR, "MICU", "SICU"),
                           icustay(30000003, 20000004, T0, T0 + HOUR)],
                30000004: [icustay(30000004, 20000005, T0, T0 + HOUR, "MICU", "SICU"),
                           icustay(30000004, 20000005, T0, T0 + 2 * HOUR, "MICU", "SICU")]}
    counted, undecided = ms.counted_set_aside(versions)
    assert counted == Counter({20000001: 1})
    assert undecided == {20000002: [30000002], 20000003: [30000002], 20000004: [30000003]}
    icu = [icustay(30000005, 20000001, T0 + 10 * HOUR, T0 + 20 * HOUR),
           icustay(30000006, 20000002, T0 + 10 * HOUR, T0 + 20 * HOUR)]
    adm = [admission(20000001, T0 - HOUR, T0 + 80 * HOUR), admission(20000002, T0 - HOUR, T0 + 80 * HOUR)]
    stays, drops = select_stays(icu, adm, [patient()], counted)
    assert [s.stay_id for s in stays] == [30000006] and drops == Counter(several_icu_stays=1)


def test_age_is_the_age_in_the_stays_year():
    adm = [admission(20000001, dt.datetime(2151, 2, 1), dt.datetime(2151, 2, 9))]
    icu = [icustay(30000001, 20000001, dt.datetime(2151, 2, 2), dt.datetime(2151, 2, 5))]
    # 17 in the anchor year 2150, 18 in the stay's year 2151: kept (upstream's anchor_age would drop it)
    stays, drops = select_stays(icu, adm, [patient(anchor_age=17, anchor_year=2150)])
    assert [(s.stay_id, s.age) for s in stays] == [(30000001, 18)] and not drops
    # 18 in the anchor year 2152, 17 in 2151: dropped (upstream would keep it)
    stays, drops = select_stays(icu, adm, [patient(anchor_age=18, anchor_year=2152)])
    assert stays == [] and drops == Counter(under_18=1)
    # top-coded ages stay 91 whatever the year
    stays, _ = select_stays(icu, adm, [patient(anchor_age=91, anchor_year=2160)])
    assert stays[0].age == 91


def test_stays_without_admission_or_patient_rows():
    icu = [icustay(30000001, 20000001, T0, T0 + HOUR), icustay(30000002, 20000002, T0 + 9 * HOUR, T0 + 10 * HOUR)]
    assert select_stays(icu, [admission(20000001, T0, T0 + 2 * HOUR)], [patient()])[1] == Counter(no_admission=1)
    assert select_stays(icu, [admission(20000001, T0, T0 + 2 * HOUR)], [])[1] == Counter(no_admission=1,
                                                                                         no_patient=1)
    # the admission must be the stay's subject's (upstream merges on subject_id and hadm_id)
    other = admission(20000001, T0, T0 + 2 * HOUR, subject_id=SUBJECT + 1)
    assert select_stays(icu[:1], [other], [patient()])[1] == Counter(no_admission=1)


def test_los_is_recomputed_from_the_times_and_48_hours_is_eligible():
    intime = dt.datetime(2150, 3, 1, 23, 3, 44)
    icu = [icustay(30000001, 20000001, intime, intime + 48 * HOUR),
           icustay(30000002, 20000002, intime + 100 * HOUR, intime + 148 * HOUR - SECOND)]
    adm = [admission(20000001, intime, intime + 49 * HOUR), admission(20000002, intime + 99 * HOUR,
                                                                      intime + 150 * HOUR)]
    stays, _ = select_stays(icu, adm, [patient()])
    assert [s.los_hours for s in stays] == [48.0, 48 - 1 / 3600]
    assert [ihm_eligible(s) for s in stays] == [True, False]


def test_rows_that_cannot_make_a_stay_are_rejected_when_read():
    with pytest.raises(mimic.RowError, match="outtime_before_intime"):
        icustay(30000001, 20000001, T0, T0 - SECOND)
    with pytest.raises(mimic.RowError, match="missing_value"):
        typed(ICUSTAYS, subject_id=SUBJECT, hadm_id=1, stay_id=2, first_careunit="MICU", intime=T0, outtime=T0)
    with pytest.raises(mimic.RowError, match="bad_date"):
        typed(PATIENTS, subject_id=SUBJECT, anchor_age=60, anchor_year=2150, dod="2150-3-1")
    assert patient(dod=dt.date(2150, 3, 1))["dod"] == dt.date(2150, 3, 1)


# --------------------------------------------------------------------------------------------------------------
# Named edge cases: in-hospital mortality

ADMIT, DISCH = dt.datetime(2150, 3, 1, 14, 0), dt.datetime(2150, 3, 9, 11, 30)
STAY = stay_of(ADMIT + HOUR, 50)


@pytest.mark.parametrize("deathtime, dod, expected", [
    (None, None, 0),
    (None, dt.date(2150, 3, 9), 1),  # dod on the discharge date: its midnight is before dischtime
    (None, dt.date(2150, 3, 10), 0),  # the day after discharge
    (None, dt.date(2150, 3, 1), 0),  # dod on the admission date: midnight is before admittime 14:00
    (None, dt.date(2150, 3, 2), 1),
    (DISCH, None, 1),  # both ends inclusive
    (ADMIT, None, 1),
    (DISCH + SECOND, None, 0),
    (ADMIT - SECOND, dt.date(2150, 3, 1), 0),
])
def test_in_hospital_mortality(deathtime, dod, expected):
    adm = admission(20000001, ADMIT, DISCH, deathtime)
    assert in_hospital_mortality(STAY, adm, patient(dod=dod)) == expected


def test_dod_counts_on_the_admission_date_only_when_admitted_at_midnight():
    midnight = dt.datetime(2150, 3, 1)
    assert in_hospital_mortality(STAY, admission(20000001, midnight, DISCH), patient(dod=midnight.date())) == 1
    assert ms.dod_midnight(dt.date(2150, 3, 1)) == ms.dod_midnight("2150-03-01") == midnight


def test_mortality_without_dischtime_is_0_and_needs_the_stays_own_rows():
    assert in_hospital_mortality(STAY, admission(20000001, ADMIT, None, ADMIT + HOUR), patient()) == 0
    with pytest.raises(ValueError, match="not hadm_id 20000009"):
        in_hospital_mortality(STAY, admission(20000009, ADMIT, DISCH), patient())
    with pytest.raises(ValueError):
        in_hospital_mortality(STAY, admission(20000001, ADMIT, DISCH), patient(subject_id=SUBJECT + 1))


# --------------------------------------------------------------------------------------------------------------
# Named edge cases: CXR pairing

def test_an_xray_exactly_48_hours_after_intime_is_paired_for_ihm():
    stay = stay_of(T0, 72)
    at_48 = image("b", T0 + 48 * HOUR)
    assert pair_cxr(stay, [image("a", T0), at_48, image("c", T0 + 48 * HOUR + SECOND)], "ihm") == at_48
    # StudyTime's fraction is kept: half a second late is outside (upstream truncates it to 48 h and pairs it)
    assert pair_cxr(stay, [image("c", T0 + 48 * HOUR + SECOND / 2)], "ihm") is None
    # intime itself is inside, a second before is not
    assert pair_cxr(stay, [image("a", T0)], "ihm").dicom_id == "a"
    assert pair_cxr(stay, [image("a", T0 - SECOND)], "ihm") is None


def test_ihm_window_is_48_hours_even_when_the_stay_is_shorter():
    stay = stay_of(T0, 30)  # not IHM-eligible, but the window is upstream's intime + 48 h
    late = image("a", T0 + 40 * HOUR)
    assert pair_cxr(stay, [late], "ihm") == late
    assert pair_cxr(stay, [late], "phenotyping") is None


def test_phenotyping_window_ends_at_outtime():
    stay = stay_of(T0, 100)
    at_out = image("a", T0 + 100 * HOUR)
    assert pair_cxr(stay, [image("b", T0 + 10 * HOUR), at_out, image("c", T0 + 100 * HOUR + SECOND)],
                    "phenotyping") == at_out
    assert pairing_window("phenotyping", 100.0).upper_hours == 100.0


def test_two_ap_xrays_at_the_same_time_go_to_the_smaller_dicom_id_and_pa_is_ignored():
    stay = stay_of(T0, 72)
    t = T0 + 20 * HOUR
    images = [image("f00", t), image("e11", t), image("a00", T0 + 30 * HOUR, "PA"), image("000", t, "LATERAL")]
    for task in ms.TASKS:
        assert pair_cxr(stay, images, task).dicom_id == "e11"
        assert pair_cxr(stay, list(reversed(images)), task).dicom_id == "e11"
    assert pair_cxr(stay, [image("a00", t, "PA")], "ihm") is None


def test_pairing_windows_as_data():
    assert pairing_window("ihm", 5.0) == ms.IHM_WINDOW
    assert ms.IHM_WINDOW.describe() == "0 h ≤ Δ ≤ 48 h from intime (latest; ties: smallest dicom_id)"
    with pytest.raises(ValueError, match="unknown MedFuse task"):
        pairing_window("decompensation", 5.0)


# --------------------------------------------------------------------------------------------------------------
# 3. Phenotype labels

def packaged_phenotype_rows() -> list[dict]:
    with open(PACKAGED / "phenotype_codes.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_label_order_is_sorted_phenotype_names():
    names = {row["phenotype"] for row in packaged_phenotype_rows()}
    assert PHENOTYPES == tuple(sorted(names))
    assert len(PHENOTYPES) == 25
    # upstream sorts case-sensitively; for these names that is also the case-insensitive order
    assert PHENOTYPES == tuple(sorted(names, key=str.lower))
    assert PHENOTYPES.index("Cardiac dysrhythmias") < PHENOTYPES.index("Chronic kidney disease") < PHENOTYPES.index(
        "Chronic obstructive pulmonary disease and bronchiectasis") < PHENOTYPES.index(
        "Complications of surgical procedures or medical care")


def labels_of(*codes, version=9) -> set[str]:
    return {name for name, v in zip(PHENOTYPES, phenotype_labels((c, version) for c in codes)) if v}


@pytest.mark.parametrize("code, version, phenotype", [
    ("5849", 9, "Acute and unspecified renal failure"),
    ("584.9", 9, "Acute and unspecified renal failure"),
    ("N179", 10, "Acute and unspecified renal failure"),
    ("N17.9", 10, "Acute and unspecified renal failure"),
    ("4019", 9, "Essential hypertension"),
    ("I10", 10, "Essential hypertension"),
    ("42731", 9, "Cardiac dysrhythmias"),
    ("I48.91", 10, "Cardiac dysrhythmias"),
    ("0389", 9, "Septicemia (except in labor)"),  # leading zero kept
    ("A41.9", 10, "Septicemia (except in labor)"),
    ("R6521", 10, "Shock"),
    ("J189", 10, "Pneumonia (except that caused by tuberculosis or sexually transmitted disease)"),
    ("V420", 10, "Chronic kidney disease"),  # an ICD-9 code's string: version ignored, as upstream
])
def test_phenotype_labels_on_real_codes(code, version, phenotype):
    assert labels_of(code, version=version) == {phenotype}


def test_phenotype_labels_combine_and_ignore_unknown_codes():
    assert phenotype_labels([]) == (0,) * 25
    assert labels_of("389", "V707", "I2510X") == set()  # 0389 without its zero, a non-benchmark code, no such code
    assert labels_of("5849", "N179", "4019", "78552") == {"Acute and unspecified renal failure",
                                                          "Essential hypertension", "Shock"}
    expected = {}
    for row in packaged_phenotype_rows():  # every code of the file sets exactly its own phenotype
        expected.setdefault(row["code"], set()).add(row["phenotype"])
    assert all(len(v) == 1 for v in expected.values())
    for code, names in expected.items():
        assert labels_of(code) == names


@needs_demo
def test_13_phenotype_codes_are_both_an_icd9_and_an_icd10_code():
    versions: dict[str, set[str]] = {}
    with gzip.open(IV_DEMO / "hosp" / "d_icd_diagnoses.csv.gz", "rt", newline="") as f:
        for row in csv.DictReader(f):
            versions.setdefault(row["icd_code"], set()).add(row["icd_version"])
    both = {row["code"] for row in packaged_phenotype_rows() if versions.get(row["code"]) == {"9", "10"}}
    assert len(both) == 13 and "V420" in both


# --------------------------------------------------------------------------------------------------------------
# Splits and the packaged files

def test_packaged_files_match_source_md():
    source = (PACKAGED / "SOURCE.md").read_text()
    for name in ("testset_iv.csv", "valset_iv.csv", "phenotype_codes.csv"):
        digest = hashlib.sha256((PACKAGED / name).read_bytes()).hexdigest()
        assert re.search(rf"`{re.escape(name)}`.*`{digest}`", source), name
        if REFERENCE.is_dir():
            assert (PACKAGED / name).read_bytes() == (REFERENCE / name).read_bytes(), name


def test_split_files_as_published():
    test_flags, val_flags = load_split_files()
    assert load_split_files()[0] is test_flags  # read once
    assert (len(test_flags), sum(test_flags.values())) == (47046, 9409)
    assert (len(val_flags), sum(val_flags.values())) == (37300, 3730)
    assert all(test_flags[s] == 0 for s in val_flags)  # validation comes from the train pool
    # the hash fallback's fractions are the files' proportions
    test_share = sum(test_flags.values()) / len(test_flags)
    val_share = sum(val_flags.values()) / len(val_flags)
    train, val, test = ms.HASH_FALLBACK_FRACTIONS
    assert test == pytest.approx(test_share, abs=1e-3)
    assert val == pytest.approx((1 - test_share) * val_share, abs=1e-3)
    assert train + val + test == pytest.approx(1.0)


@pytest.mark.parametrize("subject_id, expected", [
    (14851532, ("test", "testset_iv")),  # testset flag 1
    (16640179, ("val", "valset_iv")),  # testset flag 0, valset flag 1
    (19420610, ("train", "valset_iv")),  # testset flag 0, valset flag 0
    (11897484, ("train", "testset_iv")),  # testset flag 0, not in valset
])
def test_subject_split_from_the_files(subject_id, expected):
    assert subject_split(subject_id, *load_split_files(), salt="any") == expected


def test_subjects_in_neither_file_get_the_salted_hash_split():
    test_flags, val_flags = load_split_files()
    subject_id = 19999999
    assert subject_id not in test_flags and subject_id not in val_flags
    split, source = subject_split(subject_id, test_flags, val_flags, "medfuse")
    assert source == "hash_fallback"
    assert split == hash_split(subject_id, "medfuse", (0.72, 0.08, 0.20))
    counts = Counter(subject_split(s, {}, {}, "medfuse")[0] for s in range(20_000))
    assert {k: round(v / 20_000, 2) for k, v in counts.items()} == {"train": 0.72, "val": 0.08, "test": 0.2}
    # test is read first, as upstream
    assert subject_split(5, {5: 1}, {5: 1}, "x") == ("test", "testset_iv")


# --------------------------------------------------------------------------------------------------------------
# 4. The real MIMIC-IV demo vs a pandas re-implementation of upstream's extract_subjects_iv (with the age fix)

def read_demo(table: mimic.Table) -> list[dict]:
    with gzip.open(IV_DEMO / table.subdir / table.filename, "rt", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == table.header
        return [mimic.type_row(table, row) for row in reader]


def pandas_upstream(pd):
    """extract_subjects_iv's stay cohort and labels, in pandas, on the demo files (v2.2 names)."""
    read = lambda p: pd.read_csv(IV_DEMO / p, dtype={"icd_code": str})  # noqa: E731
    stays = read("icu/icustays.csv.gz")
    admits = read("hosp/admissions.csv.gz")
    patients = read("hosp/patients.csv.gz")
    for frame, columns in ((stays, ("intime", "outtime")), (admits, ("admittime", "dischtime", "deathtime")),
                           (patients, ("dod",))):
        for column in columns:
            frame[column] = pd.to_datetime(frame[column])
    stays = stays[stays.first_careunit == stays.last_careunit]
    stays = stays.merge(admits, on=["subject_id", "hadm_id"]).merge(patients, on="subject_id")
    counts = stays.groupby("hadm_id").stay_id.count()
    stays = stays[stays.hadm_id.map(counts) == 1].copy()
    stays["age"] = (stays.anchor_age + stays.intime.dt.year - stays.anchor_year).where(stays.anchor_age < 91, 91)
    mortality = stays.dod.notnull() & (stays.admittime <= stays.dod) & (stays.dischtime >= stays.dod)
    mortality |= stays.deathtime.notnull() & (stays.admittime <= stays.deathtime) & (stays.dischtime >= stays.deathtime)
    stays["mortality"] = mortality.astype(int)
    stays = stays[stays.age >= 18]
    diagnoses = read("hosp/diagnoses_icd.csv.gz").merge(stays[["subject_id", "hadm_id", "stay_id"]],
                                                        on=["subject_id", "hadm_id"])
    codes = pd.read_csv(PACKAGED / "phenotype_codes.csv", dtype=str)
    hits = diagnoses.merge(codes, left_on="icd_code", right_on="code")[["stay_id", "phenotype"]].drop_duplicates()
    labels = (hits.assign(value=1).pivot(index="stay_id", columns="phenotype", values="value")
              .reindex(index=sorted(stays.stay_id), columns=sorted(codes.phenotype.unique())).fillna(0).astype(int))
    return stays, labels


@needs_demo
def test_demo_stays_and_labels_match_pandas():
    pd = pytest.importorskip("pandas")
    icu, adm, pat, dx = (read_demo(t) for t in (ICUSTAYS, ADMISSIONS, PATIENTS, DIAGNOSES_ICD))
    stays, drops = select_stays(icu, adm, pat)
    expected, labels = pandas_upstream(pd)
    assert [s.stay_id for s in stays] == sorted(expected.stay_id)
    assert sum(drops.values()) + len(stays) == len(icu)
    by_id = expected.set_index("stay_id")
    admissions = {r["hadm_id"]: r for r in adm}
    patients = {r["subject_id"]: r for r in pat}
    codes_by_hadm: dict[int, list] = {}
    for row in dx:
        codes_by_hadm.setdefault(row["hadm_id"], []).append((row["icd_code"], row["icd_version"]))
    mortality = []
    for stay in stays:
        row = by_id.loc[stay.stay_id]
        assert stay.age == row.age
        assert stay.los_hours == pytest.approx((row.outtime - row.intime).total_seconds() / 3600, abs=1e-9)
        label = in_hospital_mortality(stay, admissions[stay.hadm_id], patients[stay.subject_id])
        assert label == row.mortality
        mortality.append(label)
        assert phenotype_labels(codes_by_hadm.get(stay.hadm_id, ())) == tuple(labels.loc[stay.stay_id])
    assert len(stays) > 0 and sum(map(ihm_eligible, stays)) > 0 and sum(mortality) > 0
    assert labels.to_numpy().sum() > 0 and drops["unit_transfer"] > 0


@needs_demo
def test_demo_los_matches_icustays_los_column():
    with gzip.open(IV_DEMO / "icu" / "icustays.csv.gz", "rt", newline="") as f:
        raw = {int(r["stay_id"]): float(r["los"]) for r in csv.DictReader(f)}
    for row in read_demo(ICUSTAYS):
        hours = (row["outtime"] - row["intime"]) / HOUR
        assert hours == pytest.approx(raw[row["stay_id"]] * 24, abs=1e-6)
