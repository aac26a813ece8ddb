"""MedFuse inputs for the synthetic sample tree: MIMIC-IV ``icu/icustays``, ``icu/chartevents`` and
``hosp/diagnoses_icd``, and in-hospital deaths in ``hosp/admissions``, built around the admissions sample_hosp wrote
and the chest X-ray studies sample.py drew.

``write`` runs after sample_hosp.write with a generator of its own (seeded from ``"<seed>:icu"``): it reads
``hosp/admissions.csv.gz`` back, puts ICU stays into some of those admissions (preferring admissions that hold a
subject's AP X-ray, so stays can be paired, and subjects listed in MedFuse's split files), adds a few admissions of its
own for the cases no drawn admission can carry, and rewrites ``hosp/admissions.csv.gz`` with those admissions and the
deaths (deathtime, hospital_expire_flag, discharge_location). Every other file of the tree stays byte-identical;
``hosp/labevents`` is left alone (its glucose and pH rows that fall into a stay feed those channels as they are).

Chartevents hold the 36 MetaVision items of MedFuse's item map (medfuse_events.ITEM_VARIABLES) the way MIMIC-IV
writes them (GCS as text with the score in valuenum, temperatures in °F or °C, FiO2 in %, heights in inches or cm),
charted hourly-ish, plus a few items outside the map. Diagnoses mix the phenotype codes of
``resources/medfuse_splits/phenotype_codes.csv`` (stored without dots, as MIMIC does) with unrelated codes.

The rules' edge cases (cohort-definitions.md §B: stay filters, IHM eligibility and label, CXR pairing windows, event
times and unit cleaning, phenotype codes, split files) are planted on subjects of their own and listed in SAMPLE.json's
"medfuse" section with the outcome each rule must give. The section also lists the stays whose chosen X-ray is one
the CXR sample broke on purpose (a damaged file, a repeated metadata row), with the reject its image gets.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import gzip
import io
import random
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from beam_pipeline import mimic, sample
from beam_pipeline.cohorts.medfuse_events import ITEM_LABELS, ITEM_VARIABLES, clean_value
from beam_pipeline.transforms import hourly

SECOND, MINUTE, HOUR, DAY = (dt.timedelta(seconds=1), dt.timedelta(minutes=1), dt.timedelta(hours=1),
                             dt.timedelta(days=1))
IHM_HOURS = 48
MIN_AGE = 18
CAREUNITS = (  # MIMIC-IV 2.2 icustays care units, with rough shares
    ("Medical Intensive Care Unit (MICU)", 30), ("Medical/Surgical Intensive Care Unit (MICU/SICU)", 18),
    ("Surgical Intensive Care Unit (SICU)", 12), ("Cardiac Vascular Intensive Care Unit (CVICU)", 12),
    ("Coronary Care Unit (CCU)", 10), ("Trauma SICU (TSICU)", 8),
    ("Neuro Surgical Intensive Care Unit (Neuro SICU)", 5), ("Neuro Intermediate", 3), ("Neuro Stepdown", 2))
UNITS = {  # itemid -> chartevents valueuom (icu/d_items unitname; blank where d_items has none)
    220045: "bpm", 220050: "mmHg", 220051: "mmHg", 220052: "mmHg", 220179: "mmHg", 220180: "mmHg", 220181: "mmHg",
    220210: "insp/min", 220227: "%", 220274: "", 220277: "%", 220621: "", 220739: "", 223761: "°F", 223762: "°C",
    223830: "", 223835: "", 223900: "", 223901: "", 224167: "mmHg", 224322: "mmHg", 224422: "bpm", 224639: "kg",
    224643: "mmHg", 224689: "insp/min", 224690: "insp/min", 225309: "mmHg", 225310: "mmHg", 225312: "mmHg",
    225664: "", 226512: "kg", 226531: "", 226537: "", 226707: "Inch", 226730: "cm", 227243: "mmHg",
    220048: "", 224641: "", 220546: "K/uL"}
UNMAPPED = (220048, 224641, 220546)  # Heart Rhythm, Alarms On, WBC: chart items outside MedFuse's map
RARE = (224422, 224167, 224643, 227243, 224322, 225309, 225310, 225312, 226537, 220274, 220227, 226531, 226707,
        224689, 220621)  # items most stays lack: every stay gets three of them in turn, so the sample has all 36
GCS = {  # itemid -> (text, valuenum) as MIMIC-IV charts them; every text is one of the config's possible values
    220739: (("Spontaneously", 4), ("To Speech", 3), ("To Pain", 2)),
    223901: (("Obeys Commands", 6), ("Localizes Pain", 5), ("Flex-withdraws", 4), ("Abnormal Flexion", 3),
             ("Abnormal extension", 2), ("No response", 1)),
    223900: (("Oriented", 5), ("Confused", 4), ("Inappropriate Words", 3), ("Incomprehensible sounds", 2),
             ("No Response", 1), ("No Response-ETT", 0)),
}
RHYTHMS = ("SR (Sinus Rhythm)", "ST (Sinus Tachycardia)", "AF (Atrial Fibrillation)", "SB (Sinus Bradycardia)")
UNRELATED_CODES = (  # (icd_code, icd_version) in no phenotype group
    ("V5861", 9), ("Z87891", 10), ("F329", 10), ("3051", 9), ("K219", 10), ("53081", 9), ("G4733", 10),
    ("32723", 9), ("Z794", 10), ("V5867", 9), ("Z7901", 10), ("V1582", 9), ("Y929", 10), ("R0902", 10),
    ("Z66", 10), ("V4986", 9), ("E039", 10), ("2449", 9), ("F17210", 10))
SHARED_CODE = ("V420", 10)  # an ICD-10 code spelled like an ICD-9 phenotype code (kidney transplant status)


# --------------------------------------------------------------------------------------------------------------
# Packaged MedFuse facts (read here, not through the cohort's modules, so the expectations do not borrow its code)


def _resource(name: str) -> str:
    return resources.files("beam_pipeline.resources").joinpath(f"medfuse_splits/{name}").read_text("utf-8")


def phenotype_groups() -> dict[str, tuple[str, ...]]:
    """Phenotype name -> its codes (no dots), in file order."""
    groups: dict[str, list[str]] = {}
    for row in csv.DictReader(io.StringIO(_resource("phenotype_codes.csv"))):
        groups.setdefault(row["phenotype"], []).append(row["code"])
    return {name: tuple(codes) for name, codes in groups.items()}


def split_flags() -> tuple[dict[int, int], dict[int, int]]:
    """(testset_iv, valset_iv): subject_id -> 0/1."""
    return tuple({int(s): int(f) for s, f in csv.reader(io.StringIO(_resource(name)))}  # type: ignore[return-value]
                 for name in ("testset_iv.csv", "valset_iv.csv"))


def icd_version(code: str) -> int:
    """The version a phenotype code is written with: ICD-9 when numeric or a V/E code with digits only."""
    return 9 if code[0].isdigit() or (code[0] in "VE" and code[1:].isdigit()) else 10


def expected_split(subject_id: int, test: Mapping[int, int], val: Mapping[int, int]) -> tuple[str | None, str]:
    """(split, source) as MedFuse reads its files; (None, "hash_fallback") for subjects in neither."""
    if test.get(subject_id) == 1:
        return "test", "testset_iv"
    if subject_id in val:
        return ("val" if val[subject_id] else "train"), "valset_iv"
    if subject_id in test:
        return "train", "testset_iv"
    return None, "hash_fallback"


# --------------------------------------------------------------------------------------------------------------
# The world


@dataclasses.dataclass
class Admission:
    row: dict[str, str]  # the admissions row as text (rewritten as is, apart from planted deaths)
    subject_id: int
    hadm_id: int
    admittime: dt.datetime
    dischtime: dt.datetime
    new: bool = False  # added here, not by sample_hosp

    @property
    def deathtime(self) -> dt.datetime | None:
        return mimic.parse_datetime(self.row["deathtime"]) if self.row["deathtime"] else None


@dataclasses.dataclass
class IcuStay:
    admission: Admission
    stay_id: int
    first_careunit: str
    last_careunit: str
    intime: dt.datetime
    outtime: dt.datetime
    events: list[tuple[int, dt.datetime, str, str]] = dataclasses.field(default_factory=list)  # itemid, time, text, num

    @property
    def subject_id(self) -> int:
        return self.admission.subject_id

    @property
    def los_hours(self) -> float:
        return (self.outtime - self.intime) / HOUR

    def ids(self) -> dict[str, int]:
        return {"subject_id": self.subject_id, "hadm_id": self.admission.hadm_id, "stay_id": self.stay_id}


@dataclasses.dataclass(frozen=True)
class ApImage:
    subject_id: int
    dicom_id: str
    study_id: int
    time: dt.datetime
    problem: str | None  # the reject the CXR sample planted on its study (sample.REJECTED_CASES), if any

    @property
    def usable(self) -> bool:
        return self.problem is None

    @property
    def reject(self) -> str | None:
        """What medfuse gives a stay paired with this image: a broken file's reject. A repeated metadata row is an
        exact copy, which medfuse merges (counted) and pairs; only the one-image-per-row cohorts reject the copy."""
        return None if self.problem == sample.REJECTED_CASES["duplicate_image_row"] else self.problem


def _problem(study: sample.Study) -> str | None:
    """The reject reason the pipeline gives this study's images (a broken first file, a repeated metadata row)."""
    if study.broken_file:
        return sample.REJECTED_CASES[study.broken_file]
    dicoms = [shot.dicom_id for shot in study.shots]
    return sample.REJECTED_CASES["duplicate_image_row"] if len(set(dicoms)) != len(dicoms) else None


def _read_gz(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _minutes(rng: random.Random, low: dt.timedelta, high: dt.timedelta) -> dt.timedelta:
    return rng.randint(int(low / MINUTE), int(high / MINUTE)) * MINUTE


def _seconds(rng: random.Random, low: dt.timedelta, high: dt.timedelta) -> dt.timedelta:
    return rng.randint(int(low / SECOND), int(high / SECOND)) * SECOND


def _floor_minute(value: dt.datetime) -> dt.datetime:
    return value.replace(second=0, microsecond=0)


def _bin(hours: float) -> int:
    """The hourly bin an event at ``hours`` since intime falls in (transforms.hourly: bin k covers (k, k+1])."""
    return int(hours - hourly.EPS)


class _Builder:
    def __init__(self, world: sample.World, admissions: list[dict[str, str]], seed: int, avoid: Iterable[int]):
        self.seed, self.rng = seed, random.Random(f"{seed}:icu")
        self.patients = {row["subject_id"]: row for row in world.tables["patients"]}
        self.races = {row["subject_id"]: row["race"] for row in world.tables["edstays"]}
        self.admissions = [Admission(row, int(row["subject_id"]), int(row["hadm_id"]),
                                     mimic.parse_datetime(row["admittime"]), mimic.parse_datetime(row["dischtime"]))
                           for row in admissions]
        self.images: dict[int, list[ApImage]] = {}
        self.unknown_time: set[int] = set()  # subjects with an AP image whose StudyTime does not parse
        for study in sorted(world.studies, key=lambda s: (s.subject_id, s.time, s.study_id)):
            if study.bad_time:  # the pipeline rejects its rows, and the stays of its subject that reach the pairing
                if any(shot.view == "AP" for shot in study.shots):
                    self.unknown_time.add(study.subject_id)
                continue
            for shot in study.shots:
                if shot.view == "AP":
                    self.images.setdefault(study.subject_id, []).append(ApImage(
                        study.subject_id, shot.dicom_id, study.study_id, study.time, _problem(study)))
        self.studies = {s.subject_id: [] for s in world.studies}
        for study in world.studies:
            self.studies[study.subject_id].append(study.time)
        self.ids = sample.Ids(self.rng, [s.study_id for s in world.studies] + list(self.patients) +
                              [r[k] for r in world.tables["edstays"] for k in ("stay_id", "hadm_id") if r[k]] +
                              [a.hadm_id for a in self.admissions])
        self.avoid = set(avoid)  # Symile's planted subjects: no admissions are added for them
        self.used: set[int] = set()  # subjects of planted cases
        self.stays: list[IcuStay] = []
        self.codes: dict[int, list[tuple[str, int]]] = {}  # hadm_id -> planted diagnoses (else drawn)
        self.cases: list[dict[str, Any]] = []
        self.groups = phenotype_groups()
        self.code_group = {code: name for name, codes in self.groups.items() for code in codes}
        self.test_flags, self.val_flags = split_flags()

    # ---- lookups

    def of_subject(self, subject_id: int) -> list[Admission]:
        return [a for a in self.admissions if a.subject_id == subject_id]

    def age(self, subject_id: int, year: int) -> int:
        patient = self.patients[subject_id]
        return mimic.age_at(patient["anchor_age"], patient["anchor_year"], year)

    def has_stays(self, admission: Admission) -> bool:
        return any(s.admission is admission for s in self.stays)

    def free_admissions(self, hours: float, dod: bool | None = False) -> list[Admission]:
        """Drawn admissions of subjects not used yet, lasting at least ``hours``, in a seeded order; by default of
        patients without a dod (so only deathtime can give a death label)."""
        found = [a for a in self.admissions if not a.new and a.subject_id not in self.used and
                 a.subject_id in self.patients and not self.has_stays(a) and
                 (a.dischtime - a.admittime) / HOUR >= hours and
                 self.age(a.subject_id, a.admittime.year) >= MIN_AGE and
                 (dod is None or bool(self.patients[a.subject_id]["dod"]) == dod)]
        self.rng.shuffle(found)
        return found

    def room_for(self, subject_id: int, start: dt.datetime, end: dt.datetime) -> bool:
        """A new admission [start, end] for a patient Symile's cases and the planted cases leave alone, two days
        from the subject's other admissions."""
        margin = 2 * DAY
        return subject_id in self.patients and subject_id not in self.avoid and subject_id not in self.used and all(
            a.dischtime + margin < start or end + margin < a.admittime for a in self.of_subject(subject_id))

    # ---- making things

    def new_admission(self, subject_id: int, admittime: dt.datetime, dischtime: dt.datetime,
                      discharge_location: str = "HOME") -> Admission:
        rng = self.rng
        row = {"subject_id": str(subject_id), "hadm_id": str(self.ids.number(2)),
               "admittime": mimic.format_datetime(admittime), "dischtime": mimic.format_datetime(dischtime),
               "deathtime": "", "admission_type": rng.choice(("URGENT", "DIRECT EMER.", "EW EMER.")),
               "admit_provider_id": "P" + "".join(rng.choices("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", k=5)),
               "admission_location": rng.choice(("TRANSFER FROM HOSPITAL", "PHYSICIAN REFERRAL")),
               "discharge_location": discharge_location, "insurance": rng.choice(("Medicare", "Medicaid", "Other")),
               "language": "ENGLISH", "marital_status": rng.choice(("MARRIED", "SINGLE", "WIDOWED", "")),
               "race": self.races.get(subject_id, "UNKNOWN"), "edregtime": "", "edouttime": "",
               "hospital_expire_flag": "0"}
        admission = Admission(row, subject_id, int(row["hadm_id"]), admittime, dischtime, new=True)
        self.admissions.append(admission)
        return admission

    def stay(self, admission: Admission, intime: dt.datetime, outtime: dt.datetime,
             transfer: bool = False) -> IcuStay:
        names, weights = zip(*CAREUNITS)
        first = self.rng.choices(names, weights)[0]
        last = self.rng.choice([n for n in names if n != first]) if transfer else first
        stay = IcuStay(admission, self.ids.number(3), first, last, intime, outtime)
        start = 3 * len(self.stays) % len(RARE)  # len(RARE) is a multiple of 3: five stays chart all of them
        stay.events = chart_series(self.rng, stay, RARE[start:start + 3])
        self.stays.append(stay)
        return stay

    def die(self, admission: Admission) -> None:
        """In-hospital death at discharge, as MIMIC-IV records most of them (deathtime == dischtime)."""
        admission.row.update(deathtime=admission.row["dischtime"], hospital_expire_flag="1",
                             discharge_location="DIED")


# --------------------------------------------------------------------------------------------------------------
# Chart events


def _number(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def chart_series(rng: random.Random, stay: IcuStay, rare: Iterable[int]) -> list[tuple[int, dt.datetime, str, str]]:
    """A stay's chartevents as (itemid, charttime, value, valuenum): vitals on about a fifth of the hours (arterial
    or non-invasive BP), temperature, GCS and rhythm now and then on every fourth hour, glucose, blood gas and FiO2
    (ventilated patients) less often, weight and height around admission, and three of the RARE items."""
    ventilated, arterial = rng.random() < 0.35, rng.random() < 0.4
    base = {"hr": rng.gauss(88, 14), "sbp": rng.gauss(118, 16), "dbp": rng.gauss(62, 9), "rr": rng.gauss(19, 3),
            "spo2": rng.gauss(96.5, 1.2), "temp": rng.gauss(37.0, 0.5), "glucose": rng.gauss(135, 30),
            "ph": rng.gauss(7.38, 0.04), "weight": rng.gauss(80, 16), "height": rng.gauss(170, 9)}
    events: list[tuple[int, dt.datetime, str, str]] = []

    def add(itemid: int, time: dt.datetime, value: float, decimals: int = 0) -> None:
        text = _number(value, decimals)
        events.append((itemid, time, text, text))

    def vitals(time: dt.datetime) -> None:
        sbp, dbp = base["sbp"] + rng.gauss(0, 9), base["dbp"] + rng.gauss(0, 6)
        add(220045, time, base["hr"] + rng.gauss(0, 7))
        for itemid, value in zip((220050, 220051, 220052) if arterial else (220179, 220180, 220181),
                                 (sbp, dbp, (sbp + 2 * dbp) / 3 + rng.gauss(0, 2))):
            add(itemid, time, value)
        add(220210, time, max(6.0, base["rr"] + rng.gauss(0, 2.5)))
        add(220277, time, min(100.0, base["spo2"] + rng.gauss(0, 1.2)))

    def neuro(time: dt.datetime) -> None:
        for itemid, options in GCS.items():
            if itemid == 223900 and ventilated:
                text, score = options[-1]
            else:
                text, score = options[min(len(options) - 2, int(abs(rng.gauss(0, 1.2))))]
            events.append((itemid, time, text, str(score)))
        if rng.random() < 0.5:
            events.append((220048, time, rng.choice(RHYTHMS), ""))

    start = (stay.intime + HOUR).replace(minute=0, second=0, microsecond=0)
    hour, time = 0, start
    while time <= stay.outtime:
        if rng.random() < 0.2:
            vitals(time)
        if hour % 4 == 0:
            if rng.random() < 0.6:
                fahrenheit = rng.random() < 0.8
                celsius = base["temp"] + rng.gauss(0, 0.3)
                add(223761 if fahrenheit else 223762, time, celsius * 9 / 5 + 32 if fahrenheit else celsius, 1)
            if rng.random() < 0.5:
                neuro(time)
            if ventilated and hour % 8 == 0:
                fio2 = rng.choice((30, 35, 40, 40, 50, 50, 60, 70, 100))
                add(223835, time, fio2)
                add(224690, time, max(8.0, base["rr"] + rng.gauss(0, 2)))
        if hour % 6 == 3 and rng.random() < 0.7:
            add(225664, time + _minutes(rng, 5 * MINUTE, 25 * MINUTE), base["glucose"] + rng.gauss(0, 25))
        if hour % 12 == 6 and (arterial or rng.random() < 0.3):
            when = time + _minutes(rng, 10 * MINUTE, 40 * MINUTE)
            add(223830 if arterial else 220274, when, base["ph"] + rng.gauss(0, 0.03), 2)
        if hour % 24 == 20:
            add(224639, time, base["weight"] + rng.gauss(0, 1), 1)
        if rng.random() < 0.03:
            events.append((224641, time + _minutes(rng, MINUTE, 50 * MINUTE), "Yes", ""))
        hour, time = hour + 1, time + HOUR
    first = stay.intime + _minutes(rng, 10 * MINUTE, 90 * MINUTE)
    if first < stay.outtime:
        add(226512, first, base["weight"], 1)
        if rng.random() < 0.6:
            add(226730, first, base["height"])
        add(220546, first, rng.uniform(4, 16), 1)
    mean = (base["sbp"] + 2 * base["dbp"]) / 3
    rare_values = {  # itemid -> (value, decimals)
        224422: (base["rr"] - 3, 0), 224167: (base["sbp"], 0), 224643: (base["dbp"], 0), 227243: (base["sbp"], 0),
        224322: (mean + 5, 0), 225309: (base["sbp"] + 4, 0), 225310: (base["dbp"] - 2, 0), 225312: (mean, 0),
        226537: (base["glucose"], 0), 220274: (base["ph"] - 0.03, 2), 220227: (min(100.0, base["spo2"] + 1), 0),
        226531: (base["weight"] / 0.453592, 1), 226707: (base["height"] / 2.54, 0), 224689: (base["rr"] - 2, 0),
        220621: (base["glucose"] + 10, 0)}
    for itemid in rare:
        when = _floor_minute(stay.intime + (stay.outtime - stay.intime) * rng.uniform(0.05, 0.95))
        add(itemid, when, *rare_values[itemid])
    return events


# --------------------------------------------------------------------------------------------------------------
# Expectations (the rules of cohort-definitions.md §B, read straight: what the cohort must give)


def _latest_ap(images: Iterable[ApImage], start: dt.datetime, end: dt.datetime) -> ApImage | None:
    """The latest image in [start, end], ties to the smallest dicom_id. Compared as naive datetimes, as the cohort
    does: a naive ``.timestamp()`` is local time, whose order a DST gap inverts on some machines."""
    inside = [i for i in images if start <= i.time <= end]
    if not inside:
        return None
    latest = max(i.time for i in inside)
    return min((i for i in inside if i.time == latest), key=lambda i: i.dicom_id)


def _phenotypes(builder: _Builder, hadm_id: int) -> list[str]:
    return sorted({builder.code_group[c] for c, _ in builder.codes.get(hadm_id, ()) if c in builder.code_group})


def expected(builder: _Builder, stay: IcuStay) -> dict[str, Any]:
    """{"stay": "kept" or the drop reason, "ihm": None (dropped, LOS < 48 h or rejected) or {label, cxr_dicom_id},
    "phenotyping": None (dropped or rejected) or {cxr_dicom_id, phenotypes}}, and "rejected": "cxr_row_rejected"
    for a kept stay whose subject has an AP image of unknown time (it may be the stay's X-ray; an IHM stay under 48 h
    is dropped first)."""
    admission = stay.admission
    single = [s for s in builder.stays if s.admission is admission and s.first_careunit == s.last_careunit]
    reason = ("unit_transfer" if stay.first_careunit != stay.last_careunit else
              "several_icu_stays" if len(single) > 1 else
              "under_18" if builder.age(stay.subject_id, stay.intime.year) < MIN_AGE else "kept")
    result: dict[str, Any] = {"stay": reason, "ihm": None, "phenotyping": None}
    if reason != "kept":
        return result
    if stay.subject_id in builder.unknown_time:
        return {**result, "rejected": "cxr_row_rejected"}
    images = builder.images.get(stay.subject_id, ())
    if stay.los_hours >= IHM_HOURS:
        dod = builder.patients[stay.subject_id]["dod"]
        deaths = [admission.deathtime, dt.datetime.fromisoformat(dod) if dod else None]
        label = int(any(t is not None and admission.admittime <= t <= admission.dischtime for t in deaths))
        cxr = _latest_ap(images, stay.intime, stay.intime + IHM_HOURS * HOUR)
        result["ihm"] = {"label": label, "cxr_dicom_id": cxr.dicom_id if cxr else None}
    cxr = _latest_ap(images, stay.intime, stay.outtime)
    result["phenotyping"] = {"cxr_dicom_id": cxr.dicom_id if cxr else None,
                             "phenotypes": _phenotypes(builder, admission.hadm_id)}
    return result


def _stay_entry(builder: _Builder, case: str, stay: IcuStay, **extra: Any) -> dict[str, Any]:
    admission = stay.admission
    return {"case": case, **stay.ids(), "intime": mimic.format_datetime(stay.intime),
            "outtime": mimic.format_datetime(stay.outtime), "los_hours": stay.los_hours,
            "first_careunit": stay.first_careunit, "last_careunit": stay.last_careunit,
            "admittime": admission.row["admittime"], "dischtime": admission.row["dischtime"],
            "deathtime": admission.row["deathtime"] or None, "dod": builder.patients[stay.subject_id]["dod"],
            "admission_added": admission.new, **extra}


# --------------------------------------------------------------------------------------------------------------
# Planted cases


def _plant_cxr(builder: _Builder, case: str, offset: dt.timedelta, whole_second: bool, los: tuple[float, float],
               ihm_paired: bool, phenotyping_paired: bool) -> None:
    """A stay whose window bound meets an AP X-ray: intime = (the image's time, fraction dropped) - offset. The
    subject's other AP images keep a day away from the stay, so the expectation is about this one."""
    rng = builder.rng
    images = [i for subject in sorted(builder.images) for i in builder.images[subject]
              if i.usable and (i.time.microsecond == 0) == whole_second and subject in builder.patients]
    rng.shuffle(images)
    for image in images:
        same = [i for i in builder.images[image.subject_id] if i.study_id == image.study_id]
        if image.subject_id in builder.used or len(same) != 1:
            continue
        intime = image.time.replace(microsecond=0) - offset
        outtime = intime + _seconds(rng, los[0] * HOUR, los[1] * HOUR)
        others = [i for i in builder.images[image.subject_id] if i.study_id != image.study_id]
        if any(intime - DAY <= i.time <= outtime + DAY for i in others) or \
                builder.age(image.subject_id, intime.year) < MIN_AGE:
            continue
        admission = next((a for a in builder.of_subject(image.subject_id) if not a.new and not builder.has_stays(a)
                          and a.admittime <= intime - 30 * MINUTE and outtime + 30 * MINUTE <= a.dischtime), None)
        if admission is None:
            start = _floor_minute(intime - _minutes(rng, HOUR, 8 * HOUR))
            end = _floor_minute(outtime + _minutes(rng, 3 * HOUR, 3 * DAY))
            if not builder.room_for(image.subject_id, start, end):
                continue
            admission = builder.new_admission(image.subject_id, start, end)
        builder.used.add(image.subject_id)
        stay = builder.stay(admission, intime, outtime)
        entry = _stay_entry(builder, case, stay, cxr={
            "dicom_id": image.dicom_id, "study_id": image.study_id, "study_datetime": image.time.isoformat(sep=" "),
            "offset_seconds": (image.time - intime).total_seconds(), "paired_for_ihm": ihm_paired,
            "paired_for_phenotyping": phenotyping_paired})
        builder.cases.append(entry)
        return


def _plant_in_admission(builder: _Builder, hours: float, los: Callable[[Admission], dt.timedelta],
                        dod: bool | None = False, transfer: bool = False) -> IcuStay | None:
    """One stay early in a drawn admission of an unused subject."""
    for admission in builder.free_admissions(hours, dod):
        intime = admission.admittime + _seconds(builder.rng, 20 * MINUTE, 3 * HOUR)
        outtime = intime + los(admission)
        if outtime > admission.dischtime:
            continue
        builder.used.add(admission.subject_id)
        return builder.stay(admission, intime, outtime, transfer=transfer)
    return None


def _plant_two(builder: _Builder, transfer_first: bool) -> list[IcuStay]:
    """Two stays in one admission, back from the ICU after half a day to a day."""
    rng = builder.rng
    for admission in builder.free_admissions(5 * 24):
        first_in = admission.admittime + _seconds(rng, 20 * MINUTE, 3 * HOUR)
        first_out = first_in + _seconds(rng, 20 * HOUR, 40 * HOUR)
        second_in = first_out + _seconds(rng, 12 * HOUR, 24 * HOUR)
        second_out = second_in + _seconds(rng, 20 * HOUR, 50 * HOUR)
        if second_out > admission.dischtime:
            continue
        builder.used.add(admission.subject_id)
        return [builder.stay(admission, first_in, first_out, transfer=transfer_first),
                builder.stay(admission, second_in, second_out)]
    return []


def _plant_dod(builder: _Builder) -> None:
    """A patient with a dod and no deathtime: a new admission ending on the dod date (discharged to hospice)."""
    rng = builder.rng
    for subject_id in sorted(builder.patients):
        dod = builder.patients[subject_id]["dod"]
        if not dod:
            continue
        dischtime = dt.datetime.fromisoformat(dod) + _minutes(rng, 9 * HOUR, 18 * HOUR)
        admittime = _floor_minute(dischtime - _minutes(rng, 4 * DAY, 7 * DAY))
        before = [a.dischtime for a in builder.of_subject(subject_id)] + builder.studies.get(subject_id, [])
        if not builder.room_for(subject_id, admittime, dischtime) or any(t > admittime - DAY for t in before):
            continue  # the subject's last days: nothing of theirs comes after
        admission = builder.new_admission(subject_id, admittime, dischtime, discharge_location="HOSPICE")
        builder.used.add(subject_id)
        intime = admittime + _seconds(rng, HOUR, 6 * HOUR)
        stay = builder.stay(admission, intime, dischtime - _seconds(rng, HOUR, 6 * HOUR))
        builder.cases.append(_stay_entry(builder, "dod_on_discharge_date_only", stay))
        return


def _plant_under_18(builder: _Builder) -> None:
    """The youngest patient, in a year where they were 17 (anchor_age + year - anchor_year), in a new admission."""
    rng = builder.rng
    order = sorted((int(p["anchor_age"]), s) for s, p in builder.patients.items() if p["anchor_age"] < 91)
    for age, subject_id in order:
        year = builder.patients[subject_id]["anchor_year"] - (age - 17)
        admittime = dt.datetime(year, rng.randint(2, 10), rng.randint(1, 28), rng.randint(0, 23), rng.randint(0, 59))
        dischtime = admittime + _minutes(rng, 4 * DAY, 8 * DAY)
        if not builder.room_for(subject_id, admittime, dischtime) or \
                any(admittime - 5 * DAY <= t <= dischtime + 5 * DAY for t in builder.studies.get(subject_id, ())):
            continue
        admission = builder.new_admission(subject_id, admittime, dischtime)
        builder.used.add(subject_id)
        intime = admittime + _seconds(rng, HOUR, 8 * HOUR)
        stay = builder.stay(admission, intime, intime + _seconds(rng, 50 * HOUR, 70 * HOUR))
        builder.cases.append(_stay_entry(builder, "under_18_in_stay_year", stay,
                                         age_in_stay_year=builder.age(subject_id, intime.year),
                                         anchor_age=age, anchor_year=builder.patients[subject_id]["anchor_year"]))
        return


EVENT_CASES = (  # case, hours after intime (None: see _plant_events), itemid, value, valuenum
    ("event_at_intime_plus_48h", 48.0, 220045, "131", "131"),
    ("event_1min_after_intime_plus_48h", 48 + 1 / 60, 220045, "127", "127"),
    ("event_before_intime", -0.5, 226512, "92.4", "92.4"),
    ("event_after_outtime", None, 220045, "77", "77"),
    ("fahrenheit_temperature", 10.5, 223761, "101.3", "101.3"),
    ("celsius_temperature", 14.5, 223762, "37.9", "37.9"),
    ("bp_slash_string_systolic", 12.5, 220179, "120/80", ""),
    ("bp_slash_string_diastolic", 12.5, 220180, "120/80", ""),
    ("fio2_percent", 16.5, 223835, "50", "50"),
    ("fio2_already_a_fraction", 20.5, 223835, "0.4", "0.4"),
    ("glucose_text_error", 18.5, 225664, "ERROR", ""),
    ("height_in_inches", 2.5, 226707, "67", "67"),
    ("weight_in_pounds", 3.5, 226531, "180", "180"),
    ("gcs_text", 6.5, 220739, "To Speech", "3"),
    ("unmapped_itemid", 7.5, 220048, "AF (Atrial Fibrillation)", ""),
)


def _plant_events(builder: _Builder) -> None:
    """One kept stay (intime on a whole minute, LOS > 50 h) carrying the time and unit cases. Other rows of the
    same channel in the bins these rows fall in are removed, so each row is its bin's value."""
    rng = builder.rng
    stay = _plant_in_admission(builder, 4 * 24, lambda a: _seconds(rng, 55 * HOUR, 70 * HOUR))
    if stay is None:
        return
    stay.intime = _floor_minute(stay.intime)
    planted = []
    for case, hours, itemid, value, valuenum in EVENT_CASES:
        time = stay.outtime.replace(second=0) + 20 * MINUTE if hours is None else stay.intime + hours * HOUR
        time = time.replace(microsecond=0)
        planted.append((case, itemid, time, value, valuenum))
    bins = {(ITEM_VARIABLES.get(itemid), _bin((time - stay.intime) / HOUR)) for _, itemid, time, _, _ in planted
            if time >= stay.intime}
    stay.events = [e for e in stay.events if (ITEM_VARIABLES.get(e[0]), _bin((e[1] - stay.intime) / HOUR)) not in bins
                   or e[1] < stay.intime] + [(itemid, time, value, num) for _, itemid, time, value, num in planted]
    builder.cases.append(_stay_entry(builder, "events", stay))
    for case, itemid, time, value, valuenum in planted:
        hours = (time - stay.intime) / HOUR
        variable = ITEM_VARIABLES.get(itemid)
        cleaned = None if variable is None else clean_value(variable, value, float(valuenum) if valuenum else None,
                                                            UNITS[itemid], ITEM_LABELS[itemid])
        in_ihm = variable is not None and cleaned is not None and -hourly.EPS < hours < IHM_HOURS + hourly.EPS
        in_pheno = variable is not None and cleaned is not None and -hourly.EPS < hours < stay.los_hours + hourly.EPS
        builder.cases.append({
            "case": case, **stay.ids(), "itemid": itemid, "charttime": mimic.format_datetime(time), "value": value,
            "valuenum": valuenum, "valueuom": UNITS[itemid], "variable": variable, "hours": hours,
            "expected_value": cleaned, "in_ihm": in_ihm, "ihm_bin": _bin(hours) if in_ihm else None,
            "in_phenotyping": in_pheno, "phenotyping_bin": _bin(hours) if in_pheno else None})


def plant(builder: _Builder) -> None:
    """Every case the world has room for, each on a subject of its own; a small world may lack some."""
    rng = builder.rng
    _plant_cxr(builder, "cxr_at_intime_plus_48h", IHM_HOURS * HOUR, True, (50, 80), True, True)
    _plant_cxr(builder, "cxr_at_intime", dt.timedelta(0), True, (50, 80), True, True)
    _plant_cxr(builder, "cxr_fraction_after_intime_plus_48h", IHM_HOURS * HOUR, False, (50, 80), False, True)
    stay = _plant_in_admission(builder, 40, lambda a: _seconds(rng, 20 * HOUR, 36 * HOUR),
                               transfer=True)
    if stay:
        builder.cases.append(_stay_entry(builder, "unit_transfer", stay))
    for case, transfer_first in (("two_icu_stays_in_one_admission", False),
                                 ("unit_transfer_beside_a_single_unit_stay", True)):
        pair = _plant_two(builder, transfer_first)
        for stay, other in zip(pair, reversed(pair)):
            builder.cases.append(_stay_entry(builder, case, stay, other_stay_id=other.stay_id))
    stay = _plant_in_admission(builder, 3 * 24,
                               lambda a: a.dischtime - _seconds(rng, 10 * MINUTE, 2 * HOUR) - a.admittime - 3 * HOUR)
    if stay:
        builder.die(stay.admission)
        builder.cases.append(_stay_entry(builder, "in_hospital_death", stay))
    _plant_dod(builder)
    stay = _plant_in_admission(builder, 2 * 24, lambda a: _seconds(rng, 20 * HOUR, 40 * HOUR))
    if stay:
        groups = [name for name in builder.groups if name != builder.code_group[SHARED_CODE[0]]]
        codes = [(code, icd_version(code)) for name in rng.sample(groups, 2) for code in
                 rng.sample(builder.groups[name], 1)]
        builder.codes[stay.admission.hadm_id] = codes + [SHARED_CODE] + rng.sample(UNRELATED_CODES, 3)
        builder.cases.append(_stay_entry(builder, "los_under_48h", stay))
        builder.cases.append({"case": "icd10_code_spelled_like_an_icd9_phenotype_code", **stay.ids(),
                              "icd_code": SHARED_CODE[0], "icd_version": SHARED_CODE[1],
                              "expected_phenotype": builder.code_group[SHARED_CODE[0]]})
    stay = _plant_in_admission(builder, 2 * 24 + 4, lambda a: IHM_HOURS * HOUR)
    if stay:
        builder.codes[stay.admission.hadm_id] = rng.sample(UNRELATED_CODES, 5)
        builder.cases.append(_stay_entry(builder, "los_exactly_48h", stay))
        builder.cases.append({"case": "no_phenotype_codes", **stay.ids(), "expected_phenotypes": []})
    _plant_under_18(builder)
    _plant_events(builder)


# --------------------------------------------------------------------------------------------------------------
# Ordinary stays, deaths and diagnoses


def ordinary(builder: _Builder) -> None:
    """An ICU stay in some drawn admissions: most of those holding an AP X-ray of the subject (the stay then often
    around it), few others, and the first admission of every subject named in MedFuse's split files."""
    rng = builder.rng
    listed = set(builder.test_flags) | set(builder.val_flags)
    seen: set[int] = set()
    for admission in sorted(builder.admissions, key=lambda a: (a.subject_id, a.admittime, a.hadm_id)):
        if admission.new or admission.subject_id in builder.used or builder.has_stays(admission):
            continue
        first_listed = admission.subject_id in listed and admission.subject_id not in seen
        seen.add(admission.subject_id)
        hours = (admission.dischtime - admission.admittime) / HOUR
        inside = [i for i in builder.images.get(admission.subject_id, ())
                  if admission.admittime + HOUR <= i.time <= admission.dischtime - HOUR]
        if not (first_listed or rng.random() < (0.3 if inside else 0.04)) or hours < 6:
            continue
        if inside and rng.random() < 0.75:  # around the X-ray
            image = rng.choice(inside)
            intime = max(admission.admittime + 10 * MINUTE, image.time - _seconds(rng, 30 * MINUTE, 40 * HOUR))
        else:
            intime = admission.admittime + _seconds(rng, 10 * MINUTE, min(12 * HOUR, hours * HOUR / 3))
        los = _seconds(rng, 12 * HOUR, 47 * HOUR) if rng.random() < 0.3 else _seconds(rng, 48 * HOUR, 100 * HOUR)
        outtime = min(intime.replace(microsecond=0) + los, admission.dischtime - _seconds(rng, 5 * MINUTE, HOUR))
        if outtime - intime < 2 * HOUR:
            continue
        stay = builder.stay(admission, intime.replace(microsecond=0), outtime, transfer=rng.random() < 0.06)
        if stay.los_hours >= IHM_HOURS and rng.random() < 0.15:
            builder.die(admission)


def diagnoses(builder: _Builder) -> list[dict[str, Any]]:
    """diagnoses_icd rows for every admission: planted lists as they are; otherwise phenotype codes (more with an
    ICU stay) mixed with unrelated ones, in a random seq_num order."""
    rng, rows = builder.rng, []
    names = list(builder.groups)
    for admission in sorted(builder.admissions, key=lambda a: a.hadm_id):
        codes = builder.codes.get(admission.hadm_id)
        if codes is None:
            icu = builder.has_stays(admission)
            groups = rng.sample(names, rng.randint(2, 6) if icu else rng.randint(0, 3))
            codes = [(code, icd_version(code)) for name in groups for code in rng.sample(builder.groups[name], 1)]
            codes += rng.sample(UNRELATED_CODES, rng.randint(2, 6) if icu else rng.randint(1, 4))
            rng.shuffle(codes)
            builder.codes[admission.hadm_id] = codes
        rows += [{"subject_id": admission.subject_id, "hadm_id": admission.hadm_id, "seq_num": seq,
                  "icd_code": code, "icd_version": version} for seq, (code, version) in enumerate(codes, 1)]
    return rows


# --------------------------------------------------------------------------------------------------------------
# Writing


def icustay_rows(builder: _Builder) -> list[dict[str, Any]]:
    return [{**stay.ids(), "first_careunit": stay.first_careunit, "last_careunit": stay.last_careunit,
             "intime": stay.intime, "outtime": stay.outtime,
             "los": format((stay.outtime - stay.intime) / DAY, ".17g")} for stay in builder.stays]


def chartevent_rows(builder: _Builder) -> list[dict[str, Any]]:
    """chartevents rows: per stay a few caregivers, each charting time one caregiver and one storetime (minutes
    later), warning 0."""
    rng = random.Random(f"{builder.seed}:icu:rows")
    rows = []
    for stay in builder.stays:
        caregivers = [rng.randint(10000, 99999) for _ in range(3)]
        charted: dict[dt.datetime, tuple[int, dt.datetime]] = {}
        for itemid, time, value, valuenum in sorted(stay.events, key=lambda e: (e[1], e[0], e[2])):
            if time not in charted:
                charted[time] = (rng.choice(caregivers), time + _minutes(rng, MINUTE, 90 * MINUTE))
            caregiver, storetime = charted[time]
            rows.append({**stay.ids(), "caregiver_id": caregiver, "charttime": time, "storetime": storetime,
                         "itemid": itemid, "value": value, "valuenum": valuenum, "valueuom": UNITS[itemid],
                         "warning": 0})
    return rows


def write(world: sample.World, roots: sample.SampleRoots, seed: int,
          symile: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write icu/icustays, icu/chartevents and hosp/diagnoses_icd under roots.iv and rewrite hosp/admissions with
    the added admissions and deaths; return SAMPLE.json's "medfuse" section ({} when there are no admissions)."""
    admissions_path = Path(roots.iv, mimic.ADMISSIONS.subdir, mimic.ADMISSIONS.filename)
    if not admissions_path.exists():
        return {}
    avoid = {c["subject_id"] for c in (symile or {}).get("cases", ())}
    builder = _Builder(world, _read_gz(admissions_path), seed, avoid)
    plant(builder)
    ordinary(builder)
    diagnosis_rows = diagnoses(builder)
    for table, rows in ((mimic.ICUSTAYS, icustay_rows(builder)), (mimic.CHARTEVENTS, chartevent_rows(builder)),
                        (mimic.DIAGNOSES_ICD, diagnosis_rows),
                        (mimic.ADMISSIONS, [a.row for a in builder.admissions])):
        sample.write_table(Path(roots.iv, table.subdir, table.filename), table, rows)
    labs = _read_gz(Path(roots.iv, mimic.LABEVENTS.subdir, mimic.LABEVENTS.filename))
    return manifest(builder, labs, len(diagnosis_rows))


def manifest(builder: _Builder, labs: list[dict[str, str]], diagnoses_rows: int) -> dict[str, Any]:
    """SAMPLE.json's "medfuse" section: the rules the expectations follow, counts, the planted cases (stay cases
    with "expected": the stay's outcome, IHM label and CXR, phenotyping CXR and phenotypes; event cases with the
    cleaned value and bins) and the subjects MedFuse's split files name."""
    for entry in builder.cases:
        if "first_careunit" in entry:
            stay = next(s for s in builder.stays if s.stay_id == entry["stay_id"])
            entry["expected"] = expected(builder, stay)
    for stay in builder.stays:  # found, not planted: stays whose chosen X-ray is one the CXR sample broke
        tasks = {}
        if expected(builder, stay)["stay"] == "kept" and stay.subject_id not in builder.unknown_time:
            images = builder.images.get(stay.subject_id, ())
            ends = {"phenotyping": stay.outtime}
            if stay.los_hours >= IHM_HOURS:
                ends["ihm"] = stay.intime + IHM_HOURS * HOUR
            tasks = {task: image for task, end in sorted(ends.items())
                     if (image := _latest_ap(images, stay.intime, end)) and image.reject}
        for task, image in tasks.items():
            builder.cases.append({"case": "chosen_cxr_unusable", **stay.ids(), "task": task,
                                  "dicom_id": image.dicom_id, "study_id": image.study_id,
                                  "expected_reject": image.reject})
    mapped_labs = {int(i) for i, v in ITEM_VARIABLES.items() if i < 220000}
    in_stays = sum(1 for row in labs if int(row["itemid"]) in mapped_labs and row["hadm_id"] and any(
        int(row["hadm_id"]) == s.admission.hadm_id and s.intime <= mimic.parse_datetime(row["charttime"]) <= s.outtime
        for s in builder.stays))
    split_subjects = []
    for subject_id in sorted({s.subject_id for s in builder.stays}):
        split, source = expected_split(subject_id, builder.test_flags, builder.val_flags)
        if source != "hash_fallback":
            split_subjects.append({"subject_id": subject_id, "testset_iv": builder.test_flags.get(subject_id),
                                   "valset_iv": builder.val_flags.get(subject_id), "expected_split": split,
                                   "source": source,
                                   "stay_ids": sorted(s.stay_id for s in builder.stays if s.subject_id == subject_id)})
    events = sum(len(s.events) for s in builder.stays)
    return {
        "rules": {
            "stays": "first_careunit == last_careunit, else unit_transfer; then exactly one such stay in the "
                     "admission, else several_icu_stays; then age in the stay's year (anchor_age + year(intime) - "
                     "anchor_year) >= 18, else under_18",
            "ihm": "LOS >= 48 h; label 1 when deathtime or dod (as midnight) is within [admittime, dischtime]",
            "cxr": "AP only; the latest with intime <= StudyDateTime (fraction kept) <= intime + 48 h (IHM) or "
                   "outtime (phenotyping); ties: smallest dicom_id",
            "events": "hours since intime; IHM keeps 0 <= t <= 48, phenotyping 0 <= t <= LOS; bin = int(t - 1e-6)",
            "phenotypes": "admission's ICD codes, dots removed, icd_version ignored, via phenotype_codes.csv",
            "splits": "testset_iv flag 1 -> test; else valset_iv flag -> val (1) / train (0); else in testset_iv "
                      "-> train; else the hash fallback",
        },
        "counts": {"icustays": len(builder.stays), "chartevents": events,
                   "chartevents_unmapped": sum(e[0] in UNMAPPED for s in builder.stays for e in s.events),
                   "admissions_with_icu_stays": len({s.admission.hadm_id for s in builder.stays}),
                   "admissions_added": sum(a.new for a in builder.admissions),
                   "in_hospital_deaths": sum(a.row["hospital_expire_flag"] == "1" for a in builder.admissions),
                   "diagnoses_icd": diagnoses_rows, "labevents_of_mapped_items_in_stays": in_stays},
        "cases": builder.cases,
        "split_file_subjects": split_subjects,
    }
