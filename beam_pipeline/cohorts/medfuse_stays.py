"""MedFuse's ICU stays, labels, subject splits and CXR pairing (cohort-definitions.md §B.1, §B.2, §B.4), as pure
functions the medfuse cohorts' per-subject stage calls: no transforms, no I/O beyond the packaged CSVs.

What follows the original (nyuad-cai/MedFuse @ 3f8b54e, mimic4extract/) and what deliberately does not; each
function's docstring has the details:

    stays       ICU stays with first_careunit == last_careunit; then admissions with exactly one of those stays
                (counted after the unit filter, as upstream: an admission with one transfer stay and one
                single-unit stay keeps the latter); then age >= 18 at the stay's year (upstream: anchor_age, a fix)
    LOS         hours from intime/outtime; icustays.los (days, a rounded float) is not read
    IHM         eligible when LOS >= 48 h; label = deathtime or dod within [admittime, dischtime], dod as midnight
    phenotypes  the admission's ICD codes as strings without dots, icd_version ignored (as upstream), 25 labels in
                Python's sorted() order of the group names (upstream's listfile order)
    splits      testset_iv.csv / valset_iv.csv as published; subjects in neither file get a salted hash split
                (upstream puts them in train) and are counted as hash_fallback
    CXR         AP only, latest StudyDateTime with intime <= t <= intime + 48 h (IHM) or outtime (phenotyping);
                ties to the smallest dicom_id (upstream: arbitrary); StudyTime's fraction kept (upstream drops it)
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import functools
import io
from collections import Counter
from importlib import resources
from typing import Any, Iterable, Mapping, Sequence

from beam_pipeline import mimic
from beam_pipeline.transforms.split import hash_split
from beam_pipeline.transforms.windows import Window, choose

TABLES = (mimic.ICUSTAYS, mimic.ADMISSIONS, mimic.PATIENTS, mimic.DIAGNOSES_ICD)

# --------------------------------------------------------------------------------------------------------------
# Stays (§B.1)

MIN_AGE = 18
IHM_HOURS = 48.0
STAY_DROPS: tuple[str, ...] = ("unit_transfer", "no_admission", "no_patient", "several_icu_stays", "under_18")
"""Why a stay is not kept, in the order the reasons are tested (upstream's order of filters and joins); a stay is
counted once, under the first that applies."""


@dataclasses.dataclass(frozen=True)
class Stay:
    subject_id: int
    hadm_id: int
    stay_id: int
    intime: dt.datetime
    outtime: dt.datetime
    los_hours: float  # (outtime - intime) in hours
    age: int  # mimic.age_at(anchor_age, anchor_year, intime.year)


def select_stays(icustays: Iterable[Mapping[str, Any]], admissions: Iterable[Mapping[str, Any]],
                 patients: Iterable[Mapping[str, Any]],
                 set_aside: Mapping[int, int] | None = None) -> tuple[list[Stay], Counter]:
    """Typed rows (ICUSTAYS, ADMISSIONS, PATIENTS; one row per key: callers remove copies first) -> the kept stays
    by stay_id, and a count per STAY_DROPS reason. Works per subject or on whole tables.

    "Exactly one ICU stay" counts the admission's stays that passed the unit filter (and the joins), as upstream
    filters transfers first, plus ``set_aside`` (hadm_id -> its stays left out of ``icustays`` that still count:
    counted_set_aside). Age is the age in the stay's year, mimic.age_at(anchor_age, anchor_year, year(intime)):
    upstream uses anchor_age, the age in anchor_year, which may be years away from the stay."""
    admission_keys = {(r["subject_id"], r["hadm_id"]) for r in admissions}
    patients = {r["subject_id"]: r for r in patients}
    drops: Counter = Counter()
    joined = []
    for row in icustays:
        reason = ("unit_transfer" if not one_care_unit(row) else
                  "no_admission" if (row["subject_id"], row["hadm_id"]) not in admission_keys else
                  "no_patient" if row["subject_id"] not in patients else None)
        if reason:
            drops[reason] += 1
        else:
            joined.append(row)
    stays_per_admission = Counter(row["hadm_id"] for row in joined) + Counter(set_aside or {})
    kept = []
    for row in joined:
        patient = patients[row["subject_id"]]
        age = mimic.age_at(patient["anchor_age"], patient["anchor_year"], row["intime"].year)
        reason = ("several_icu_stays" if stays_per_admission[row["hadm_id"]] > 1 else
                  "under_18" if age < MIN_AGE else None)
        if reason:
            drops[reason] += 1
            continue
        kept.append(Stay(subject_id=row["subject_id"], hadm_id=row["hadm_id"], stay_id=row["stay_id"],
                         intime=row["intime"], outtime=row["outtime"],
                         los_hours=(row["outtime"] - row["intime"]) / dt.timedelta(hours=1), age=age))
    return sorted(kept, key=lambda s: s.stay_id), drops


def one_care_unit(row: Mapping[str, Any]) -> bool:
    return row["first_careunit"] == row["last_careunit"]


def counted_set_aside(versions: Mapping[int, Sequence[Mapping[str, Any]]]) -> tuple[Counter, dict[int, list[int]]]:
    """A subject's set-aside stays (stay_id -> its icustays versions: rows that differ) -> (hadm_id -> set-aside
    stays that count towards the admission's one ICU stay in every version, hadm_id -> stay_ids that count towards
    it in some versions only). Upstream counts every row, so a stay is still its admission's stay when its rows
    differ; a version counts when it passes the unit filter (the joins are its siblings' own). Only some versions
    counting leaves the siblings' several_icu_stays undecided."""
    counted: Counter = Counter()
    undecided: dict[int, list[int]] = {}
    for stay_id, rows in sorted(versions.items()):
        hadm_ids = {row["hadm_id"] if one_care_unit(row) else None for row in rows}
        if len(hadm_ids) == 1:
            counted.update(hadm_ids - {None})
        else:
            for hadm_id in sorted(hadm_ids - {None}):
                undecided.setdefault(hadm_id, []).append(stay_id)
    return counted, undecided


def ihm_eligible(stay: Stay) -> bool:
    """IHM predicts from the first 48 h, so the stay must last that long. Upstream tests LOS >= 48 h - 1e-6 h on
    float days; with exact times and whole-second timestamps that is the same set of stays."""
    return stay.los_hours >= IHM_HOURS


def dod_midnight(dod: str | dt.date | None) -> dt.datetime | None:
    """patients.dod (a date, as text or a date) as the midnight that starts it: pandas' to_datetime of the date,
    what upstream compares with admittime and dischtime."""
    return None if dod is None else dt.datetime.combine(dt.date.fromisoformat(str(dod)), dt.time())


def in_hospital_mortality(stay: Stay, admission: Mapping[str, Any], patient: Mapping[str, Any]) -> int:
    """1 when admissions.deathtime or patients.dod falls within [admittime, dischtime] (both ends inclusive), else 0.

    dod compares as midnight: a death on the discharge date counts (midnight <= dischtime), one recorded only as
    dod on the admission date does not unless admittime is exactly midnight (midnight < admittime). A missing
    dischtime gives 0 (upstream's NaT comparisons are false). The stay names the admission and patient it is for."""
    if (admission["subject_id"], admission["hadm_id"], patient["subject_id"]) != (
            stay.subject_id, stay.hadm_id, stay.subject_id):
        raise ValueError(f"stay {stay.stay_id} is hadm_id {stay.hadm_id} of subject {stay.subject_id}, not hadm_id "
                         f"{admission['hadm_id']} / subject {patient['subject_id']}")
    admittime, dischtime = admission["admittime"], admission["dischtime"]
    if dischtime is None:
        return 0
    return int(any(t is not None and admittime <= t <= dischtime
                   for t in (admission["deathtime"], dod_midnight(patient["dod"]))))


# --------------------------------------------------------------------------------------------------------------
# Phenotypes (§B.2)

PHENOTYPES: tuple[str, ...] = (
    "Acute and unspecified renal failure",
    "Acute cerebrovascular disease",
    "Acute myocardial infarction",
    "Cardiac dysrhythmias",
    "Chronic kidney disease",
    "Chronic obstructive pulmonary disease and bronchiectasis",
    "Complications of surgical procedures or medical care",
    "Conduction disorders",
    "Congestive heart failure; nonhypertensive",
    "Coronary atherosclerosis and other heart disease",
    "Diabetes mellitus with complications",
    "Diabetes mellitus without complication",
    "Disorders of lipid metabolism",
    "Essential hypertension",
    "Fluid and electrolyte disorders",
    "Gastrointestinal hemorrhage",
    "Hypertension with complications and secondary hypertension",
    "Other liver diseases",
    "Other lower respiratory disease",
    "Other upper respiratory disease",
    "Pleurisy; pneumothorax; pulmonary collapse",
    "Pneumonia (except that caused by tuberculosis or sexually transmitted disease)",
    "Respiratory failure; insufficiency; arrest (adult)",
    "Septicemia (except in labor)",
    "Shock",
)
"""The 25 labels in label order: the YAML group names exactly as upstream spells them (the reference's "COPD and
bronchiectasis" is "Chronic obstructive pulmonary disease and bronchiectasis"), in Python's sorted() order, which
is how upstream orders its listfile columns (case-sensitive; for these names the same as case-insensitive)."""


def _resource_text(name: str) -> str:
    return resources.files("beam_pipeline.resources").joinpath(f"medfuse_splits/{name}").read_text("utf-8")


@functools.cache
def phenotype_codes() -> dict[str, int]:
    """ICD code (no dots) -> its phenotype's index in PHENOTYPES, from the packaged phenotype_codes.csv."""
    codes: dict[str, int] = {}
    for row in csv.DictReader(io.StringIO(_resource_text("phenotype_codes.csv"))):
        index = PHENOTYPES.index(row["phenotype"])
        if codes.setdefault(row["code"], index) != index:
            raise ValueError(f"phenotype_codes.csv: code {row['code']} is in two phenotypes")
    return codes


def phenotype_labels(icd_codes: Iterable[tuple[str, int | None]]) -> tuple[int, ...]:
    """An admission's (icd_code, icd_version) pairs -> 25 labels in PHENOTYPES order (1 = some code of the group).

    Codes match as strings with dots removed and icd_version ignored, as upstream: 13 of the codes exist as both an
    ICD-9 and an ICD-10 code (e.g. V420: kidney transplant status in ICD-9, a motorcycle accident in ICD-10), and an
    ICD-10 occurrence still sets the ICD-9 code's phenotype."""
    codes = phenotype_codes()
    labels = [0] * len(PHENOTYPES)
    for code, _version in icd_codes:
        index = codes.get(code.replace(".", ""))
        if index is not None:
            labels[index] = 1
    return tuple(labels)


# --------------------------------------------------------------------------------------------------------------
# Subject splits (§B.1)

HASH_FALLBACK_FRACTIONS: tuple[float, float, float] = (0.72, 0.08, 0.20)
"""train, val, test (mimic.SPLITS order) for subjects in neither file: the files' proportions, 20 % test
(9,409 / 47,046) and then 10 % of the rest val (3,730 / 37,300)."""
HASH_FALLBACK = "hash_fallback"


def _flags(name: str) -> dict[int, int]:
    flags: dict[int, int] = {}
    for line_number, fields in enumerate(csv.reader(io.StringIO(_resource_text(name))), 1):
        if len(fields) != 2 or fields[1] not in ("0", "1") or int(fields[0]) in flags:
            raise ValueError(f"{name} line {line_number}: expected a new subject_id and a 0/1 flag, got {fields}")
        flags[int(fields[0])] = int(fields[1])
    return flags


@functools.cache
def load_split_files() -> tuple[dict[int, int], dict[int, int]]:
    """(testset_iv flags, valset_iv flags): subject_id -> 0/1, read once from the packaged CSVs (no header). The
    dicts are shared: do not modify them."""
    return _flags("testset_iv.csv"), _flags("valset_iv.csv")


def subject_split(subject_id: int, test_flags: Mapping[int, int], val_flags: Mapping[int, int],
                  salt: str) -> tuple[str, str]:
    """(split, source): the file whose entry decides, as upstream reads them (test first, then val among the rest).

    test flag 1 -> ("test", "testset_iv"); else listed in valset -> ("val" if flagged else "train", "valset_iv");
    else test flag 0 -> ("train", "testset_iv") (337 such train-pool subjects); listed in neither -> the salted
    sha256 hash split with HASH_FALLBACK_FRACTIONS, source "hash_fallback" (upstream: train), so new MIMIC-IV
    subjects still get a test and val share."""
    if test_flags.get(subject_id) == 1:
        return "test", "testset_iv"
    if subject_id in val_flags:
        return ("val" if val_flags[subject_id] else "train"), "valset_iv"
    if subject_id in test_flags:
        return "train", "testset_iv"
    return hash_split(subject_id, salt, HASH_FALLBACK_FRACTIONS), HASH_FALLBACK


# --------------------------------------------------------------------------------------------------------------
# CXR pairing (§B.4)

TASKS: tuple[str, ...] = ("ihm", "phenotyping")
CXR_VIEWS: tuple[str, ...] = ("AP",)
IHM_WINDOW = Window("intime", 0.0, IHM_HOURS, choice="latest", tie_break="dicom_id")


def pairing_window(task: str, los_hours: float) -> Window:
    """The task's window from intime: 0 <= Δ <= 48 h for IHM; 0 <= Δ <= LOS (up to outtime, so per stay) for
    phenotyping. Latest X-ray first, ties to the smallest dicom_id."""
    if task == "ihm":
        return IHM_WINDOW
    if task == "phenotyping":
        return dataclasses.replace(IHM_WINDOW, upper_hours=los_hours)
    raise ValueError(f"unknown MedFuse task {task!r}; choose one of {', '.join(TASKS)}")


def pair_cxr(stay: Stay, images: Iterable[mimic.Image], task: str) -> mimic.Image | None:
    """The subject's AP X-ray paired with the stay for the task, or None.

    Study times keep StudyTime's fraction: upstream truncates it to whole seconds, so an X-ray less than a second
    past the window's end is paired there and not here, and same-second X-rays are ordered by time, not dicom_id."""
    candidates = [image for image in images if image.view_position in CXR_VIEWS]
    return choose(pairing_window(task, stay.los_hours), stay.intime, candidates, lambda image: image.study_time,
                  lambda image: image.dicom_id)
