"""Sample-data generator: MIMIC-CXR-JPG, MIMIC-IV-ED and MIMIC-IV trees in the real file formats, for tests and demos.

``generate`` writes a fully synthetic world: patients, ED stays with triage, vitals, home and ED medications and ED
diagnoses, chest X-ray studies with radiograph-like JPEGs, CheXpert/NegBio labels and a patient-level split, plus
Symile-MIMIC's inputs around it (hospital admissions, labevents and a MIMIC-IV-ECG tree: ``sample_hosp``) and
MedFuse's (ICU stays, chartevents, diagnoses and in-hospital deaths: ``sample_icu``).
``generate_on_open_data`` writes only the CXR side, built around the real ED stays and patients of the open MIMIC-IV
demos (read in place), with the documented metadata rows of subject 10000032 and the two open NIH ChestX-ray14
images as pixel data.

No real patient data is written: every value is drawn from seeded generators, or is public demo or documentation
data. Edge cases a pipeline must survive (study times on the linkage-window bounds, back-to-back and overlapping
stays, subjects without stays or missing from patients, CSV quoting, StudyTime spellings, missing labels, odd views,
events charted after the X-ray) are planted on purpose and listed in ``SAMPLE.json`` at the output root. Same
arguments give a byte-identical tree. Formats, headers and paths all come from ``mimic``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import gzip
import hashlib
import io
import json
import random
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import cv2
import numpy as np

from beam_pipeline import mimic

LINK_WINDOW = dt.timedelta(hours=24)  # the pipeline default (--window_end_hours); SAMPLE.json assumes it
MINUTE, HOUR, DAY = dt.timedelta(minutes=1), dt.timedelta(hours=1), dt.timedelta(days=1)
JPEG = [cv2.IMWRITE_JPEG_QUALITY, 95]
FULL_SIZES = ((3056, 2544), (2544, 3056), (2705, 2539))  # (Rows, Columns) seen in MIMIC-CXR-JPG
# Pixel noise of the synthetic radiographs: +-3 grey levels make full-size JPEGs of ~1.5 MB on average, what
# MIMIC-CXR-JPG weighs (570.3 GB for 377,110 JPEGs); the +-6 of version 1 made 2.2-2.4 MB and, at ~12 ms of decoding
# per MB, overstated the benchmarks' decode by ~1.5x. Bump the version whenever the pixels change: the benchmarks'
# cached samples are keyed by it.
NOISE, RADIOGRAPH_VERSION = 3, 2

COMPLAINTS = (
    "Dyspnea", "SOB", "Chest pain", "CHEST PAIN", "Chest pain, Dyspnea", "Fever, Cough", "Cough", "FEVER",
    "Abd pain, N/V", "s/p Fall", "S/P FALL, HEAD STRIKE", "MVC", "Altered mental status", "Weakness", "Dizziness",
    "Hypoxia", "DYSPNEA, LE EDEMA", 'Pt states "can\'t breathe"', '"Not feeling well", Fatigue', "Fever, Cough\nSOB",
    "Chest pain\ns/p Fall", "Transfer, PNA", "Hemoptysis", "R RIB PAIN", "Syncope", "N/V, Diarrhea",
)
THEME_WORDS = (  # first match wins: the theme drives vitals, medications, diagnoses and labels
    ("infection", ("fever", "cough", "pna", "hemoptysis")),
    ("dyspnea", ("dyspnea", "sob", "breath", "hypoxia", "edema")),
    ("chest", ("chest",)),
    ("trauma", ("fall", "mvc", "rib", "trauma")),
    ("abdominal", ("abd", "n/v", "diarrhea", "vomit")),
)
PAINFUL = ("chest", "trauma", "abdominal")
VITAL_NORMS = dict(zip(mimic.VITALS, ((98.1, 0.7), (84, 14), (17, 2), (98, 1.5), (136, 20), (77, 12))))
THEME_VITALS = {"infection": {"temperature": 2.2, "heartrate": 18, "resprate": 3},
                "dyspnea": {"resprate": 7, "o2sat": -6, "heartrate": 12},
                "chest": {"sbp": 14, "heartrate": 6}, "trauma": {"heartrate": 10, "sbp": 8}}
RHYTHMS = ("Sinus Rhythm", "Sinus Tachycardia", "Atrial Fibrillation", "afib", "sr", "Paced Rhythm")
RACES = ("WHITE", "WHITE", "WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC/LATINO - PUERTO RICAN", "ASIAN - CHINESE",
         "WHITE - OTHER EUROPEAN", "PORTUGUESE", "OTHER", "UNKNOWN", "UNABLE TO OBTAIN", "PATIENT DECLINED TO ANSWER")
DISCHARGES = ("HOME", "HOME", "HOME", "LEFT WITHOUT BEING SEEN", "TRANSFER", "LEFT AGAINST MEDICAL ADVICE",
              "ELOPED", "OTHER")
HOME_MEDS = (  # name, gsn, ndc, ETC groups (codes as in the ED demo's medrecon; "*" names are uncoded)
    ("furosemide", "008208", "10544013130", (("00000250", "Diuretic - Loop"),)),
    ("aspirin", "016995", "10135017301", (("00000575", "Salicylate Analgesics"),
                                          ("00005843", "Platelet Aggregation Inhibitors - Salicylates"))),
    ("metformin", "040974", "10544063030", (("00000156", "Insulin Response Enhancers - Biguanides"),)),
    ("lisinopril", "000393", "10544058530", (("00000224", "ACE Inhibitors"),)),
    ("digoxin", "000018", "10135053401", (("00000203", "Digitalis Glycosides"),)),
    ("albuterol sulfate [ProAir HFA]", "028090", "21695042308",
     (("00005970", "Asthma/COPD Therapy - Beta 2-Adrenergic Agents, Inhaled, Short Acting"),)),
    ("amlodipine", "016927", "10135052603", (("00004609", "Calcium Channel Blockers - Dihydropyridines"),)),
    ("*acuvite", "0", "0", (("", ""),)),
    ("*nutrient drink ", "0", "0", (("", ""),)),
)
ED_MEDS = {  # theme -> (pyxis name, gsns); an empty gsn tuple is a dispense with a blank gsn
    "infection": (("CefTRIAXone", ("009162", "059424")), ("Levofloxacin", ("046770",)), ("CefePIME", ()),
                  ("Acetaminophen", ("004490",))),
    "dyspnea": (("Furosemide", ("008205",)), ("Furosemide 40mg/4mL 4mL VIAL", ("008205",)),
                ("Albuterol 0.083% Neb Soln", ("005039",))),
    "chest": (("Aspirin", ("004380",)), ("Aspirin 81mg TAB", ("004380",)),
              ("Nitroglyce 100mg/250mL 250mL BTL", ("015361", "064586"))),
    "trauma": (("Morphine Sulfat 4mg/1mL 1mL VIAL", ("074851",)), ("Acetaminophen 500mg TAB", ("004490",)),
               ("HYDROmorphone (Dilaudid)", ("062823",))),
    "abdominal": (("Ondansetron 4mg/2mL 2mL VIAL", ("015869", "061716")), ("Pantoprazole Sodium", ("047635", "052194")),
                  ("Morphine Sulfat 4mg/1mL 1mL VIAL", ("074851",))),
    "general": (("Acetaminophen", ("004490",)), ("Ondansetron", ("015869", "061716"))),
}
DIAGNOSES = {  # theme -> (icd_code, icd_version, icd_title)
    "infection": (("486", 9, "PNEUMONIA,ORGANISM UNSPECIFIED"), ("J189", 10, "Pneumonia, unspecified organism"),
                  ("0389", 9, "SEPTICEMIA NOS")),
    "dyspnea": (("R0602", 10, "Shortness of breath"), ("4280", 9, "CONGESTIVE HEART FAILURE, UNSPEC")),
    "chest": (("R079", 10, "Chest pain, unspecified"), ("78650", 9, "CHEST PAIN NOS")),
    "trauma": (("W19XXXA", 10, "Unspecified fall, initial encounter"), ("80701", 9, "FX ONE RIB-CLOSED")),
    "abdominal": (("R1010", 10, "Upper abdominal pain, unspecified"), ("78701", 9, "NAUSEA WITH VOMITING")),
    "general": (("R531", 10, "Weakness"), ("7802", 9, "SYNCOPE AND COLLAPSE"), ("E860", 10, "Dehydration")),
}
COMORBIDITIES = (("4019", 9, "HYPERTENSION NOS"), ("E119", 10, "Type 2 diabetes mellitus without complications"),
                 ("42731", 9, "ATRIAL FIBRILLATION"))
LABEL_PRIOR = {"Atelectasis": .15, "Cardiomegaly": .12, "Consolidation": .05, "Edema": .08,
               "Enlarged Cardiomediastinum": .04, "Fracture": .02, "Lung Lesion": .03, "Lung Opacity": .15,
               "Pleural Effusion": .12, "Pleural Other": .01, "Pneumonia": .06, "Pneumothorax": .02,
               "Support Devices": .1}
THEME_LABELS = {"infection": {"Pneumonia": .35, "Consolidation": .25, "Lung Opacity": .3, "Pleural Effusion": .08},
                "dyspnea": {"Edema": .3, "Pleural Effusion": .3, "Cardiomegaly": .25, "Enlarged Cardiomediastinum": .1},
                "chest": {"Cardiomegaly": .1, "Enlarged Cardiomediastinum": .08},
                "trauma": {"Fracture": .25, "Pneumothorax": .1}}
VIEW_CODES = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral", "": ""}
FORCED_ROLES = ("back_to_back", "overlap", "no_ed_stays", "not_in_patients")  # subjects 0-3, so every run has them
SUBJECT_CASES = ("no_ed_stays", "not_in_patients")
BOUNDARY_CASES = (("at_intime", dt.timedelta(0)), ("at_intime_plus_24h", LINK_WINDOW),
                  ("1s_after_intime_plus_24h", LINK_WINDOW + dt.timedelta(seconds=1)),
                  ("1s_before_intime", -dt.timedelta(seconds=1)), ("hours_before_intime", -4 * HOUR))
DOCUMENTED = (  # mimic-schemas.md §1.2, subject 10000032; the last two rows' metadata is our plausible choice
    ("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", 50414267, "PA", 3056, 2544, "2180-05-06 21:30:14.531", "Erect"),
    ("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", 50414267, "LATERAL", 3056, 2544, "2180-05-06 21:30:14.531",
     "Erect"),
    ("2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", 53189527, "PA", 3056, 2544, "2180-06-26 16:55:00.312", "Erect"),
    ("e084de3b-be89b11e-20fe3f9f-9c8d8dfe-4cfd202c", 53189527, "LATERAL", 3056, 2544, "2180-06-26 16:55:00.312",
     "Erect"),
    ("68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714", 53911762, "AP", 2705, 2539, "2180-07-23 08:05:56.875", ""),
    ("fffabebf-74fd3a1f-673b6b41-96ec0ac9-2ab69818", 53911762, "AP", 2705, 2539, "2180-07-23 08:05:56.875", ""),
    ("ea030e7a-2e3b1346-bc518786-7a8fd698-f673b44c", 56699142, "AP", 3056, 2544, "2180-08-05 22:10:37.25", ""),
)
DOCUMENTED_SUBJECT = 10000032
BROKEN_FILES = {  # case -> (reject reason the pipeline must give, how the file is damaged)
    "missing_image_file": ("missing_image", lambda data, key: None),
    "empty_image_file": ("empty_image", lambda data, key: b""),
    "truncated_image_file": ("truncated_image", lambda data, key: data[: len(data) // 2]),
    "random_bytes_image_file": ("not_a_jpeg", lambda data, key: hashlib.sha256(key.encode()).digest() * 64),
}
REJECTED_CASES = {"bad_study_time": "bad_study_time", "duplicate_image_row": "duplicate_dicom_id",
                  **{case: reason for case, (reason, _) in BROKEN_FILES.items()}}
Sizer = Callable[["Study"], tuple[int, int]]  # a study's (Rows, Columns)
Painter = Callable[["Shot", int, int], bytes]  # one image's JPEG bytes at that size


@dataclasses.dataclass(frozen=True)
class SampleRoots:
    """The pipeline roots; field names equal ``Table.module``."""

    cxr: str
    ed: str
    iv: str
    ecg: str = ""  # MIMIC-IV-ECG (sample_hosp); empty when the tree has none (open-data mode)


@dataclasses.dataclass(frozen=True)
class Stay:
    subject_id: int
    stay_id: int
    intime: dt.datetime
    outtime: dt.datetime
    acuity: int | None
    complaint: str


class Shot(NamedTuple):
    dicom_id: str
    view: str
    orientation: str


@dataclasses.dataclass
class Study:
    """One CXR study; mutable so planted cases can overwrite a field of an ordinary study."""

    subject_id: int
    study_id: int
    time: dt.datetime
    shots: tuple[Shot, ...]
    chexpert: tuple[str, ...] | None
    negbio: tuple[str, ...] | None
    stay: Stay | None = None  # the stay it was generated around
    integer_time: bool = False  # StudyTime spelled "80556" instead of "80556.0"
    bad_time: bool = False  # StudyTime corrupted to an impossible hour (the pipeline must reject it)
    broken_file: str | None = None  # one of BROKEN_FILES: how the first image's file is damaged
    size: tuple[int, int] | None = None  # fixed (Rows, Columns), for documented rows


@dataclasses.dataclass
class World:
    stays: list[Stay]
    studies: list[Study]
    cases: list[tuple[str, Study]]
    tables: dict[str, list[dict[str, Any]]]  # Table.name -> rows (ED and patients; empty on open data)
    bad_rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # SAMPLE.json "bad_rows"


class Ids:
    """Unique random ids: MIMIC's 8-digit ranges by first digit, and 5x8-hex dicom ids."""

    def __init__(self, rng: random.Random, taken: Iterable[Any] = ()):
        self.rng, self.taken = rng, set(taken)

    def _fresh(self, draw: Callable[[], Any]) -> Any:
        value = draw()
        while value in self.taken:
            value = draw()
        self.taken.add(value)
        return value

    def number(self, first_digit: int) -> int:
        return self._fresh(lambda: first_digit * 10_000_000 + self.rng.randrange(10_000_000))

    def dicom(self) -> str:
        def draw() -> str:
            digits = f"{self.rng.getrandbits(160):040x}"
            return "-".join(digits[i:i + 8] for i in range(0, 40, 8))
        return self._fresh(draw)


# --------------------------------------------------------------------------------------------------------------
# Clinical content


def theme(complaint: str) -> str:
    """Coarse complaint category, so vitals, drugs, codes and X-ray labels agree with the chief complaint."""
    lowered = complaint.lower()
    return next((name for name, words in THEME_WORDS if any(w in lowered for w in words)), "general")


def _vitals(rng: random.Random, topic: str, severity: float) -> dict[str, Any]:
    shifts = THEME_VITALS.get(topic, {})
    values = {name: rng.gauss(mean + severity * shifts.get(name, 0), sd) for name, (mean, sd) in VITAL_NORMS.items()}
    return {name: round(v, 1) if name == "temperature" else min(100, round(v)) if name == "o2sat" else round(v)
            for name, v in values.items()}


def _pain(rng: random.Random, topic: str, odd: tuple[str, ...] = ("UA", "unable", "13", "Critical")) -> str:
    draw = rng.random()
    if draw < 0.06:
        return rng.choice(odd)
    if draw < 0.12:
        return ""
    return str(min(10, max(0, round(rng.gauss(6 if topic in PAINFUL else 1, 3)))))


def _stays(rng: random.Random, ids: Ids, subject_id: int, start: dt.datetime, role: str) -> list[Stay]:
    """1-4 visits; gaps of days to a year, some back-to-back (outtime == next intime) or overlapping."""
    stays, intime = [], start
    count = 2 if role in ("back_to_back", "overlap") else rng.choice((1, 1, 2, 2, 3, 4))
    for index in range(count):
        gap = role if index == 0 and role in ("back_to_back", "overlap") else rng.choices(
            ("back_to_back", "overlap", "days"), (8, 4, 88))[0]
        outtime = intime + rng.randint(120, 14 * 60) * MINUTE
        if gap == "days" and rng.random() < 0.25:
            outtime += dt.timedelta(seconds=rng.randint(1, 59))  # real outtimes may carry seconds
        acuity = None if rng.random() < 0.04 else rng.choice((1, 2, 2, 2, 3, 3, 3, 4, 5))
        stays.append(Stay(subject_id, ids.number(3), intime, outtime, acuity, rng.choice(COMPLAINTS)))
        intime = {"back_to_back": outtime, "overlap": outtime - rng.randint(5, 60) * MINUTE}.get(
            gap, outtime.replace(second=0) + rng.randint(3, 400) * DAY + rng.randint(0, 1439) * MINUTE)
    return stays


def _ed_rows(rng: random.Random, stay: Stay, gender: str, race: str, hadm_id: int | None) -> dict[str, list[dict]]:
    """All ED rows of one stay, keyed by Table.name."""
    topic, base = theme(stay.complaint), {"subject_id": stay.subject_id, "stay_id": stay.stay_id}
    blank_triage = rng.random() < 0.08
    disposition = "ADMITTED" if hadm_id else rng.choice(DISCHARGES)
    rows: dict[str, list[dict]] = {
        "edstays": [{**base, "hadm_id": hadm_id, "intime": stay.intime, "outtime": stay.outtime, "gender": gender,
                     "race": race, "disposition": disposition,
                     "arrival_transport": rng.choice(mimic.ARRIVAL_TRANSPORTS + ("WALK IN", "UNKNOWN", "OTHER"))}],
        "triage": [{**base, **({} if blank_triage else _vitals(rng, topic, 1.0)),
                    "pain": "" if blank_triage else _pain(rng, topic), "acuity": None if blank_triage else stay.acuity,
                    "chiefcomplaint": stay.complaint}],
        "vitalsign": [], "medrecon": [], "pyxis": [], "diagnosis": []}
    duration, charttime = stay.outtime - stay.intime, stay.intime + rng.randint(5, 40) * MINUTE
    while charttime < stay.outtime:
        vitals = _vitals(rng, topic, 1 - 0.7 * ((charttime - stay.intime) / duration))
        vitals = {k: None if rng.random() < (0.5 if k == "temperature" else 0.05) else v for k, v in vitals.items()}
        rows["vitalsign"].append({**base, "charttime": charttime, **vitals, "pain": _pain(rng, topic, ("asleep", "UA")),
                                  "rhythm": rng.choice(RHYTHMS) if rng.random() < 0.15 else ""})
        charttime += rng.randint(20, 120) * MINUTE
    reconciled = stay.intime + rng.randint(10, 120) * MINUTE
    for name, gsn, ndc, groups in rng.sample(HOME_MEDS, rng.randint(0, 6)):
        rows["medrecon"] += [{**base, "charttime": reconciled, "name": name, "gsn": gsn, "ndc": ndc, "etc_rn": rank,
                              "etccode": code, "etcdescription": text} for rank, (code, text) in enumerate(groups, 1)]
    given = sorted(stay.intime + rng.uniform(0.1, 1) * duration for _ in range(rng.randint(0, 4)))
    for med_rn, when in enumerate(given, 1):
        name, gsns = rng.choice(ED_MEDS[topic] + ED_MEDS["general"])
        rows["pyxis"] += [{**base, "charttime": when.replace(second=0, microsecond=0), "med_rn": med_rn, "name": name,
                           "gsn_rn": rank, "gsn": gsn} for rank, gsn in enumerate(gsns or ("",), 1)]
    codes = rng.sample(DIAGNOSES[topic], 1) + rng.sample(COMORBIDITIES, rng.randint(0, 2))
    rows["diagnosis"] = [{**base, "seq_num": seq, "icd_code": code, "icd_version": version, "icd_title": title}
                         for seq, (code, version, title) in enumerate(codes, 1)]
    return rows


def _labels(rng: random.Random, topic: str, acuity: int | None) -> tuple[str, ...] | None:
    """A CheXpert row: ~5 % of studies unlabelled (None), ~2 % all blank, else complaint-correlated values."""
    draw = rng.random()
    if draw < 0.07:
        return None if draw < 0.05 else ("",) * len(mimic.LABELS)
    values = {}
    for label, prior in LABEL_PRIOR.items():
        devices = 0.25 if label == "Support Devices" and (acuity or 5) <= 2 else 0.0
        p = prior + THEME_LABELS.get(topic, {}).get(label, 0) + devices
        u = rng.random()
        values[label] = "1.0" if u < 0.8 * p else "-1.0" if u < p else "0.0" if u < p + 0.2 else ""
    return _with_no_finding(values)


def _with_no_finding(values: dict[str, str]) -> tuple[str, ...]:
    """No Finding is positive only when nothing but Support Devices is positive or uncertain."""
    found = any(v in ("1.0", "-1.0") for k, v in values.items() if k not in ("No Finding", "Support Devices"))
    return tuple({**values, "No Finding": "" if found else "1.0"}[label] for label in mimic.LABELS)


def _negbio(rng: random.Random, chexpert: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """NegBio disagrees with CheXpert now and then (uncertain read as positive, blank read as negative)."""
    if chexpert is None or not any(chexpert):
        return chexpert
    flips = {"-1.0": ("1.0", 0.3), "": ("0.0", 0.03)}
    values = {label: flips[v][0] if v in flips and rng.random() < flips[v][1] else v
              for label, v in zip(mimic.LABELS, chexpert)}
    return _with_no_finding(values)


def _shots(ids: Ids, views: Iterable[str], orientation: str) -> tuple[Shot, ...]:
    return tuple(Shot(ids.dicom(), view, orientation if view else "") for view in views)


def _study(rng: random.Random, ids: Ids, subject_id: int, time: dt.datetime, stay: Stay | None) -> Study:
    """A study with MIMIC-like views: portable AP (more likely when acuity is 1-2) or PA, often with a lateral."""
    topic, acuity = (theme(stay.complaint), stay.acuity) if stay else ("general", None)
    if rng.random() < (0.75 if acuity in (1, 2) else 0.3):
        shots = _shots(ids, ("AP",) if rng.random() < 0.9 else ("AP", "LATERAL"),
                       rng.choice(("Erect", "Recumbent", "")))
    else:
        shots = _shots(ids, ("PA", "LATERAL") if rng.random() < 0.85 else ("PA",), "Erect")
    time = time.replace(microsecond=0) + dt.timedelta(milliseconds=rng.randrange(1000) if rng.random() < 0.85 else 0)
    chexpert = _labels(rng, topic, acuity)
    return Study(subject_id, ids.number(5), time, shots, chexpert, _negbio(rng, chexpert), stay)


def _stay_studies(rng: random.Random, ids: Ids, stay: Stay) -> list[Study]:
    """0-2 studies, mostly during the stay, some after outtime but within 24 h of intime."""
    times = []
    for _ in range(rng.choices((0, 1, 2), (2, 6, 2))[0]):
        start, end = (stay.intime + 5 * MINUTE, stay.outtime) if rng.random() < 0.85 else (
            stay.outtime, stay.intime + LINK_WINDOW - MINUTE)
        times.append(start + dt.timedelta(seconds=rng.randint(0, max(0, int((end - start).total_seconds())))))
    return [_study(rng, ids, stay.subject_id, t, stay) for t in times]


def _outpatient(rng: random.Random, ids: Ids, subject_id: int, stays: list[Stay], start: dt.datetime) -> Study:
    """A study weeks to months before ``start`` (the first intime, if any) or after the last outtime."""
    before = not stays or rng.random() < 0.5
    anchor = start if before else max(s.outtime for s in stays)
    offset = rng.randint(20, 300) * DAY + rng.randint(0, 86399) * dt.timedelta(seconds=1)
    return _study(rng, ids, subject_id, anchor - offset if before else anchor + offset, None)


def expected_stay(stays: Iterable[Stay], time: dt.datetime) -> Stay | None:
    """The stay a study links to under LINK_WINDOW: a stay not yet left first, then the latest intime, then the
    lowest stay_id."""
    hits = [s for s in stays if s.intime <= time <= s.intime + LINK_WINDOW]
    present = [s for s in hits if time <= s.outtime]
    return max(present or hits, key=lambda s: (s.intime, -s.stay_id), default=None)


def _plant(rng: random.Random, ids: Ids, stays: list[Stay], studies: list[Study], copies: int,
           excluded: Iterable[int] = ()) -> list[tuple[str, Study]]:
    """Add studies on the linkage-window bounds (on stays far from the subject's other stays, so the expected
    stay is unambiguous) and at shared or overlapping instants, then turn some ordinary studies into view, label and
    StudyTime edge cases. Excluded subjects (the documented rows) only get the shared-instant studies."""
    by_subject: dict[int, list[Stay]] = {}
    for stay in stays:
        by_subject.setdefault(stay.subject_id, []).append(stay)
    isolated = [s for s in stays if s.subject_id not in excluded and all(
        o is s or abs(o.intime - s.intime) > 2 * LINK_WINDOW for o in by_subject[s.subject_id])]
    planned = [(name, stay, stay.intime + offset) for (name, offset), stay in
               zip(BOUNDARY_CASES * copies, isolated)]
    for a, b in zip(stays, stays[1:]):
        if a.subject_id == b.subject_id and b.intime <= a.outtime:
            shared = a.outtime == b.intime
            planned.append(("at_shared_boundary" if shared else "in_overlap", b,
                            b.intime + (a.outtime - b.intime) / 2))
    cases = []
    for name, stay, time in planned:
        study = _study(rng, ids, stay.subject_id, time, stay)
        study.time = time
        studies.append(study)
        cases.append((name, study))
    ordinary = [s for s in studies if s.stay and s.time.microsecond and s.chexpert and s.subject_id not in excluded]
    outpatient = [s for s in studies if not s.stay and s.subject_id not in excluded]
    property_cases = {"two_ap_images": (("AP", "AP"), "Recumbent"), "ll_view": (("PA", "LL"), "Erect"),
                      "blank_view_position": (("PA", ""), "Erect")}
    names = [*property_cases, "no_label_row", "all_blank_labels", "integer_study_time", "bad_study_time",
             "duplicate_image_row", *BROKEN_FILES] * copies
    for name, study in zip(names, rng.sample(ordinary, min(len(ordinary), len(names)))):
        if name in property_cases:
            study.shots = _shots(ids, *property_cases[name])
        elif name == "integer_study_time":
            study.time, study.integer_time = study.time.replace(microsecond=0), True
        elif name == "bad_study_time":
            study.bad_time = True
        elif name == "duplicate_image_row":
            study.shots += study.shots[:1]
        elif name in BROKEN_FILES:
            study.broken_file = name
        else:
            study.chexpert = study.negbio = None if name == "no_label_row" else ("",) * len(mimic.LABELS)
        cases.append((name, study))
    for (name, clock), study in zip((("short_study_time", dt.time(0, 0, 4)),
                                     ("dropped_leading_zero", dt.time(8, 5, 56, 875000))), outpatient):
        study.time = dt.datetime.combine(study.time.date(), clock)
        cases.append((name, study))
    return cases + [("outpatient", s) for s in outpatient[2:2 + copies]]


# --------------------------------------------------------------------------------------------------------------
# Worlds


def _synthetic_world(rng: random.Random, subjects: int) -> World:
    ids = Ids(rng)
    stays: list[Stay] = []
    studies: list[Study] = []
    tables: dict[str, list[dict]] = {name: [] for name in ("edstays", "triage", "vitalsign", "medrecon", "pyxis",
                                                           "diagnosis", "patients")}
    cases = []
    for index in range(subjects):
        role = FORCED_ROLES[index] if index < len(FORCED_ROLES) else rng.choices(
            ("", "no_ed_stays", "not_in_patients"), (92, 5, 3))[0]
        subject_id, gender, race = ids.number(1), rng.choice("FM"), rng.choice(RACES)
        anchor_year = rng.randint(2110, 2185)
        start = dt.datetime(anchor_year + rng.randint(0, 2), 1, 1) + rng.randint(0, 364) * DAY + rng.randint(
            0, 1439) * MINUTE
        own = [] if role == "no_ed_stays" else _stays(rng, ids, subject_id, start, role)
        own_studies = []
        for stay in own:
            hadm_id = ids.number(2) if rng.random() < (0.8 if (stay.acuity or 5) <= 2 else 0.35) else None
            for name, rows in _ed_rows(rng, stay, gender, race, hadm_id).items():
                tables[name] += rows
            own_studies += _stay_studies(rng, ids, stay)
        own_studies += [_outpatient(rng, ids, subject_id, own, start)
                        for _ in range(rng.randint(1, 2) if role in SUBJECT_CASES else rng.random() < 0.3)]
        cases += [(role, study) for study in own_studies if role in SUBJECT_CASES]
        stays += own
        studies += own_studies
        if role != "not_in_patients":
            group = rng.choice((2008, 2011, 2011, 2014, 2014, 2017))
            last = max([s.outtime for s in own] + [s.time for s in own_studies])
            tables["patients"].append({
                "subject_id": subject_id, "gender": gender, "anchor_year": anchor_year,
                "anchor_age": 91 if rng.random() < 0.04 else rng.randint(18, 85),
                "anchor_year_group": f"{group} - {group + 2}",
                "dod": (last + rng.randint(0, 700) * DAY).date().isoformat() if rng.random() < 0.08 else None})
    cases += _plant(rng, ids, stays, studies, max(1, subjects // 50))
    cases += _late_events(studies, tables)
    row = rng.choice(tables["vitalsign"])  # one impossible timestamp: a read reject, the row's other data is lost
    text = mimic.format_datetime(row["charttime"])
    row["charttime"] = text[:11] + "25" + text[13:]  # hour 25
    bad = {"table": "vitalsign", "subject_id": row["subject_id"], "stay_id": row["stay_id"],
           "charttime": row["charttime"], "expected_reject": "bad_timestamp",
           "then": "each readable X-ray of the subject that links to a stay is rejected as vitalsign_row_rejected "
                   "(the row may be charted before it), whatever its case says"}
    return World(stays, studies, cases, tables, [bad])


def _late_events(studies: list[Study], tables: dict[str, list[dict]]) -> list[tuple[str, Study]]:
    """In-stay studies whose stay has vitals or ED medications charted after the X-ray (leakage checks), among
    studies planted as readable: one planted broken or with a bad StudyTime never reaches a record."""
    cases = []
    for table in ("vitalsign", "pyxis"):
        last = {}
        for row in tables[table]:
            last[row["stay_id"]] = max(row["charttime"], last.get(row["stay_id"], row["charttime"]))
        late = [s for s in studies if s.stay and s.stay.intime <= s.time < last.get(s.stay.stay_id, s.time)
                and not s.broken_file and not s.bad_time]
        cases += [(f"{table}_after_study", study) for study in late[:3]]
    return cases


def _read_csv(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _documented_studies(rng: random.Random, ids: Ids, stays: list[Stay]) -> list[Study]:
    """The documented rows of subject 10000032 as studies (sizes and times verbatim; labels are drawn)."""
    studies: dict[int, Study] = {}
    own = [s for s in stays if s.subject_id == DOCUMENTED_SUBJECT]
    ids.taken.update(row[0] for row in DOCUMENTED)
    ids.taken.update(row[1] for row in DOCUMENTED)
    for dicom_id, study_id, view, rows, columns, time, orientation in DOCUMENTED:
        if study_id not in studies:
            when = mimic.parse_datetime(time)
            stay = expected_stay(own, when)
            chexpert = _labels(rng, theme(stay.complaint) if stay else "general", stay.acuity if stay else None)
            studies[study_id] = Study(DOCUMENTED_SUBJECT, study_id, when, (), chexpert, _negbio(rng, chexpert),
                                      stay, size=(rows, columns))
        studies[study_id].shots += (Shot(dicom_id, view, orientation),)
    return list(studies.values())


def _open_world(rng: random.Random, ed_root: Path, iv_root: Path) -> World:
    """Studies in and around the real demo stays, plus demo patients without ED visits and unknown subjects."""
    ed, hosp = Path(ed_root, mimic.EDSTAYS.subdir), Path(iv_root, mimic.PATIENTS.subdir)
    triage = {row["stay_id"]: row for row in _read_csv(ed / mimic.TRIAGE.filename)}
    stays = sorted((Stay(int(r["subject_id"]), int(r["stay_id"]), mimic.parse_datetime(r["intime"]),
                         mimic.parse_datetime(r["outtime"]),
                         int(float(triage[r["stay_id"]]["acuity"])) if triage[r["stay_id"]]["acuity"] else None,
                         triage[r["stay_id"]]["chiefcomplaint"])
                    for r in _read_csv(ed / mimic.EDSTAYS.filename)), key=lambda s: (s.subject_id, s.intime))
    patients = {int(r["subject_id"]): int(r["anchor_year"]) for r in _read_csv(hosp / mimic.PATIENTS.filename)}
    ids = Ids(rng, patients)
    studies = _documented_studies(rng, ids, stays)
    cases = [("documented_10000032", s) for s in studies]
    for stay in (s for s in stays if s.subject_id != DOCUMENTED_SUBJECT):
        placement = rng.choices(("inside", "before", "late", "none"), (55, 10, 10, 25))[0]
        offset = {"inside": rng.uniform(0.05, 1) * (stay.outtime - stay.intime), "before": -rng.uniform(1, 6) * HOUR,
                  "late": LINK_WINDOW + rng.uniform(1, 48) * HOUR}.get(placement)
        studies += [_study(rng, ids, stay.subject_id, stay.intime + offset, stay)] if offset is not None else []
    ed_subjects = sorted({s.subject_id for s in stays} - {DOCUMENTED_SUBJECT})
    for subject_id in ed_subjects:
        own = [s for s in stays if s.subject_id == subject_id]
        studies += [_outpatient(rng, ids, subject_id, own, own[0].intime)] if rng.random() < 0.25 else []
    no_ed = rng.sample(sorted(set(patients) - set(ed_subjects) - {DOCUMENTED_SUBJECT}), 4)
    unknown = [ids.number(1) for _ in range(2)]
    for subject_id in no_ed + unknown:
        start = dt.datetime(patients.get(subject_id, rng.randint(2110, 2190)), 1, 1) + rng.randint(0, 364) * DAY
        study = _outpatient(rng, ids, subject_id, [], start)
        studies.append(study)
        cases.append(("no_ed_stays" if subject_id in patients else "not_in_patients", study))
    cases += _plant(rng, ids, stays, studies, 1, excluded={DOCUMENTED_SUBJECT})
    return World(stays, studies, cases, {})


# --------------------------------------------------------------------------------------------------------------
# Images


def radiograph(rng: np.random.Generator, rows: int, columns: int, lateral: bool) -> np.ndarray:
    """A cheap chest-radiograph look-alike: body, lungs, ribs, heart and spine drawn at <=256 px, histogram
    equalised like MIMIC-CXR-JPG, upscaled, then pixel noise (``NOISE``) so full-size JPEGs weigh what real ones do."""
    scale = 256 / max(rows, columns)
    height, width = max(8, round(rows * scale)), max(8, round(columns * scale))
    y, x = np.mgrid[0:1:complex(0, height), -1:1:complex(0, width)].astype(np.float32)
    x = x * (width / height) / 0.83 - rng.uniform(-0.08, 0.08)
    y = y - rng.uniform(-0.05, 0.05)

    def blob(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return np.clip(1.3 - ((x - cx) / rx) ** 2 - ((y - cy) / ry) ** 2, 0, 1)

    body = blob(0, 0.55, 0.95, 0.7)
    lungs = blob(-0.05, 0.45, 0.45, 0.32) if lateral else blob(-0.4, 0.45, 0.3, 0.33) + blob(0.4, 0.45, 0.3, 0.33)
    ribs = np.maximum(np.sin(2 * np.pi * (y * rng.uniform(8, 11) + 0.5 * x ** 2)), 0) ** 4
    spine = (np.abs(x - (0.5 if lateral else 0.0)) < 0.08) * (1 + 0.3 * np.sin(y * 70)) * (body > 0)
    image = 0.1 + 0.5 * body - 0.45 * lungs + 0.12 * lungs * ribs + 0.25 * spine
    image += 0.0 if lateral else 0.3 * blob(0.12, 0.62, 0.28, 0.2)
    image = cv2.normalize(cv2.GaussianBlur(image, (0, 0), 1.5), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    image = cv2.resize(cv2.equalizeHist(image), (columns, rows), interpolation=cv2.INTER_CUBIC)
    noise = rng.integers(-NOISE, NOISE + 1, size=(rows, columns), dtype=np.int16)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def encode(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, JPEG)
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


def _synthetic_images(seed: int, image_size: str) -> tuple[Sizer, Painter]:
    """(sizer, painter) for synthetic radiographs; their own generator keeps the tables independent of image_size."""
    rng = np.random.default_rng(seed)

    def sizer(study: Study) -> tuple[int, int]:
        if image_size == "full":
            return FULL_SIZES[rng.choice(len(FULL_SIZES), p=(0.7, 0.1, 0.2))]
        long = int(rng.integers(600, 901))  # above the default 518 output, well below MIMIC size
        short = int(round(long * rng.uniform(0.72, 0.98)))
        return (long, short) if rng.random() < 0.8 else (short, long)

    def painter(shot: Shot, rows: int, columns: int) -> bytes:
        return encode(radiograph(rng, rows, columns, shot.view in ("LATERAL", "LL")))

    return sizer, painter


def _nih_images(folder: Path) -> tuple[Sizer, Painter]:
    """(sizer, painter) for the open NIH images: one per dicom_id by its hash, encoded once per size."""
    sources = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted(folder.glob("*.png"))]
    if len({source.shape for source in sources}) != 1:
        raise ValueError(f"{folder}: the PNGs must share one size (a study's images share Rows/Columns)")
    cache: dict[tuple[int, int, int], bytes] = {}

    def sizer(study: Study) -> tuple[int, int]:
        return study.size or sources[0].shape

    def painter(shot: Shot, rows: int, columns: int) -> bytes:
        key = (int(shot.dicom_id[:8], 16) % len(sources), rows, columns)
        if key not in cache:
            source = sources[key[0]]
            resized = source if source.shape == (rows, columns) else cv2.resize(source, (columns, rows),
                                                                                 interpolation=cv2.INTER_CUBIC)
            cache[key] = encode(resized)
        return cache[key]

    return sizer, painter


# --------------------------------------------------------------------------------------------------------------
# Writing


def _text(value: Any) -> str:
    """MIMIC's spelling: NULL is empty, datetimes without T, numbers without a trailing .0 (``98.6``, ``98``)."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return mimic.format_datetime(value)
    if isinstance(value, float):
        return f"{round(value, 1):g}"
    return str(value)


def write_table(path: Path, table: mimic.Table, rows: Iterable[dict[str, Any]]) -> None:
    """Gzipped CSV with the published header, minimal quoting, ``\\n`` endings, a fixed gzip mtime and sorted rows."""
    lines = []
    for row in rows:
        if unknown := set(row) - set(table.header):
            raise KeyError(f"{table.name} has no column {sorted(unknown)}")
        lines.append([_text(row.get(column)) for column in table.header])
    lines.sort(key=lambda line: (line[table.header.index("subject_id")], line))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped, \
            io.TextIOWrapper(zipped, encoding="utf-8", newline="") as text:
        writer = csv.writer(text, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(table.header)
        writer.writerows(lines)


def _study_time(study: Study) -> tuple[str, str]:
    date, time = mimic.format_study_time(study.time)
    if study.bad_time:
        return date, "25" + time.split(".")[0].zfill(6)[2:] + ".0"
    return date, time.split(".")[0] if study.integer_time else time


def _splits(rng: random.Random, subject_ids: Iterable[int]) -> dict[int, str]:
    """Patient-level ~80/10/10 by a seeded shuffle, so every split is non-empty from 3 subjects on."""
    order = sorted(set(subject_ids))
    rng.shuffle(order)
    tenth = max(1, round(len(order) / 10))
    return {s: "test" if i < tenth else "validate" if i < 2 * tenth else "train" for i, s in enumerate(order)}


def _write_cxr(root: Path, studies: list[Study], split: dict[int, str], sizer: Sizer, painter: Painter) -> None:
    """Images first (sizes decide Rows/Columns), then the four CXR tables."""
    metadata, labels = [], {"cxr_chexpert": [], "cxr_negbio": []}
    for study in studies:
        rows, columns = sizer(study)
        date, time = _study_time(study)
        procedure = "CHEST (PORTABLE AP)" if study.shots[0].view == "AP" else "CHEST (PA AND LAT)"
        for index, shot in enumerate(study.shots):
            path = root / mimic.image_path(study.subject_id, study.study_id, shot.dicom_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            data = painter(shot, rows, columns)
            if study.broken_file and index == 0:
                data = BROKEN_FILES[study.broken_file][1](data, shot.dicom_id)
            if data is not None:
                path.write_bytes(data)
            metadata.append({"dicom_id": shot.dicom_id, "subject_id": study.subject_id, "study_id": study.study_id,
                             "PerformedProcedureStepDescription": procedure, "ViewPosition": shot.view,
                             "Rows": rows, "Columns": columns, "StudyDate": date, "StudyTime": time,
                             "ProcedureCodeSequence_CodeMeaning": procedure,
                             "ViewCodeSequence_CodeMeaning": VIEW_CODES[shot.view],
                             "PatientOrientationCodeSequence_CodeMeaning": shot.orientation})
        for name, values in (("cxr_chexpert", study.chexpert), ("cxr_negbio", study.negbio)):
            if values is not None:
                labels[name].append({"subject_id": study.subject_id, "study_id": study.study_id,
                                     **dict(zip(mimic.LABELS, values))})
    split_rows = list({m["dicom_id"]: {"dicom_id": m["dicom_id"], "study_id": m["study_id"],
                                       "subject_id": m["subject_id"], "split": split[m["subject_id"]]}
                       for m in metadata}.values())  # one row per image, even for a duplicated metadata row
    for name, rows in (("cxr_metadata", metadata), ("cxr_split", split_rows), *labels.items()):
        write_table(root / mimic.TABLES[name].filename, mimic.TABLES[name], rows)


def _manifest(world: World, mode: str, seed: int) -> dict[str, Any]:
    """SAMPLE.json: every planted case with the stay it was planted on and the stay it should link to."""
    def entry(case: str, study: Study) -> dict[str, Any]:
        linked = expected_stay((s for s in world.stays if s.subject_id == study.subject_id), study.time)
        return {"case": case, "subject_id": study.subject_id, "study_id": study.study_id,
                "dicom_id": study.shots[0].dicom_id, "dicom_ids": [shot.dicom_id for shot in study.shots],
                "study_time": study.time.isoformat(sep=" "),
                "planted_stay_id": study.stay.stay_id if study.stay else "none",
                "offset_seconds": (study.time - study.stay.intime).total_seconds() if study.stay else None,
                "expected_stay_id": linked.stay_id if linked else "none",
                "expected_reject": REJECTED_CASES.get(case)}

    return {"mode": mode, "seed": seed, "writes_real_patient_data": False,
            "link_rule": "the pipeline's default window: intime <= study time <= intime + 24 h (inclusive); "
                         "a stay not yet left (study time <= outtime) first, then the latest intime, then the lowest "
                         "stay_id",
            "counts": {"subjects": len({s.subject_id for s in world.studies}), "stays": len(world.stays),
                       "studies": len(world.studies), "images": sum(len(s.shots) for s in world.studies)},
            "cases": sorted((entry(*case) for case in world.cases), key=lambda e: (e["case"], e["study_id"])),
            "bad_rows": world.bad_rows}


def _write(out: Path, roots: SampleRoots, world: World, images: tuple[Sizer, Painter], rng: random.Random,
           mode: str, seed: int, sections: dict[str, Any] | None = None) -> SampleRoots:
    """All tables and images, then SAMPLE.json (last: its presence means the tree is complete), with any extra
    manifest sections."""
    for name, rows in world.tables.items():
        table = mimic.TABLES[name]
        write_table(Path(getattr(roots, table.module), table.subdir, table.filename), table, rows)
    _write_cxr(Path(roots.cxr), world.studies, _splits(rng, (s.subject_id for s in world.studies)), *images)
    manifest = {**_manifest(world, mode, seed), **(sections or {})}
    (out / "SAMPLE.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return roots


def fresh_folder(outdir: str | Path) -> Path:
    """``outdir``, resolved, if it does not exist or is an empty folder. A planted absence (a missing image, report or
    ECG file) is a file not written, so a file an earlier sample left there would fill it: generating over a
    200-subject sample of the same seed with 100 subjects kept the planted-missing image 290a5d07... readable."""
    out = Path(outdir).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} is not an empty folder: write a sample into a new or empty one (files left "
                              "there would fill the sample's planted missing files)")
    return out


def generate(outdir: str | Path, subjects: int = 200, seed: int = 0, image_size: str = "small") -> SampleRoots:
    """Write a synthetic CXR + ED + patients tree under outdir, with Symile-MIMIC's admissions, labs and ECGs
    (sample_hosp) and MedFuse's ICU stays, chart events and diagnoses (sample_icu), and return its roots."""
    from beam_pipeline import sample_hosp, sample_icu, sample_reports  # they build on this module

    if image_size not in ("small", "full"):
        raise ValueError(f"image_size must be 'small' or 'full', not {image_size!r}")
    out = fresh_folder(outdir)
    roots = SampleRoots(str(out / "mimic-cxr-jpg"), str(out / "mimic-iv-ed"), str(out / "mimiciv"),
                        str(out / "mimic-iv-ecg"))
    rng = random.Random(seed)
    world = _synthetic_world(rng, subjects)
    symile = sample_hosp.write(world, roots, seed)  # its own generators: the main stream (rng) is not touched
    # MedFuse's ICU inputs (sample_icu): stays in those admissions, with deaths written back into hosp/admissions
    medfuse = sample_icu.write(world, roots, seed, symile)
    # cxr_report's MIMIC-CXR reports (sample_reports): text files beside the study folders, its own generator
    reports = sample_reports.write(world, roots, seed)
    return _write(out, roots, world, _synthetic_images(seed, image_size), rng, "synthetic", seed,
                  {"symile": symile, "medfuse": medfuse, "reports": reports})


def generate_on_open_data(outdir: str | Path, open_data_dir: str | Path, seed: int = 0) -> SampleRoots:
    """Write only the CXR side under outdir, linked to the real demo stays; ed and iv roots point into open data."""
    out, base = fresh_folder(outdir), Path(open_data_dir).resolve()
    roots = SampleRoots(str(out / "mimic-cxr-jpg"), str(base / "mimic-iv-ed-demo-2.2"), str(base / "mimic-iv-demo-2.2"))
    rng = random.Random(seed)
    world = _open_world(rng, Path(roots.ed), Path(roots.iv))
    return _write(out, roots, world, _nih_images(base / "nih-chestxray14-sample"), rng, "open_data", seed)


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir")
    parser.add_argument("--subjects", type=_at_least_one, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image_size", choices=("small", "full"), default="small")
    parser.add_argument("--on_open_data", metavar="DIR", help="shared open-data folder; writes only the CXR side")
    args = parser.parse_args(argv)
    try:
        fresh_folder(args.outdir)
    except FileExistsError as err:
        parser.error(str(err))
    if args.on_open_data:
        roots = generate_on_open_data(args.outdir, args.on_open_data, args.seed)
    else:
        roots = generate(args.outdir, args.subjects, args.seed, args.image_size)
    print(f"--mimic_cxr_root={roots.cxr} --mimic_ed_root={roots.ed} --mimic_iv_root={roots.iv}"
          + (f" --mimic_ecg_root={roots.ecg} --mimic_cxr_reports={roots.cxr}" if roots.ecg else ""))


if __name__ == "__main__":
    main()
