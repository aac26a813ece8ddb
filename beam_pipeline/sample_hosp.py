"""Symile-MIMIC inputs for the synthetic sample tree: MIMIC-IV ``hosp/admissions`` and ``hosp/labevents`` beside the
sample's ``hosp/patients``, and a MIMIC-IV-ECG tree (``record_list.csv`` plus 12-lead WFDB records), built around the
chest X-ray studies sample.py already drew.

``write`` runs on sample.generate's world with generators of its own (seeded from ``"<seed>:hosp"``), so every ED
and CXR file stays byte-identical. Admissions are of two kinds: one per admitted ED stay (its edstays ``hadm_id``),
and direct admissions one to three days before a CXR study, so that some admissions have a CXR in Symile-MIMIC's
window. ECGs and lab draws are spread around admittime, some outside the windows. The rules' edge cases
(cohort-definitions.md §A: the earliest AP/PA CXR with 24 h < Δ <= 72 h, the earliest usable ECG and per itemid the
earliest lab with -24 h <= Δ <= 24 h, Δ from admittime, all matched by subject_id) are planted on subjects whose
other data cannot interfere, and listed in SAMPLE.json's "symile" section with the choice each rule must make.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import random
from pathlib import Path
from typing import Any, Callable

import numpy as np

from beam_pipeline import mimic, sample
from beam_pipeline.transforms.ecg import write_ecg

SECOND, MINUTE, HOUR, DAY = (dt.timedelta(seconds=1), dt.timedelta(minutes=1), dt.timedelta(hours=1),
                             dt.timedelta(days=1))
FRONTAL = ("AP", "PA")
LABS = frozenset(mimic.SYMILE_LAB_ITEMIDS)
# itemid -> (mean, sd, unit): plausible adult values; the four itemids outside LABS are there to be filtered out.
LAB_VALUES = {
    50802: (0, 3, "mEq/L"), 50804: (25, 4, "mEq/L"), 50809: (125, 35, "mg/dL"), 50813: (1.8, 1, "mmol/L"),
    50818: (41, 8, "mm Hg"), 50820: (7.38, 0.06, "units"), 50821: (90, 40, "mm Hg"), 50852: (6.2, 1.1, "%"),
    50861: (30, 20, "IU/L"), 50862: (3.6, 0.6, "g/dL"), 50863: (90, 35, "IU/L"), 50868: (14, 3, "mEq/L"),
    50878: (35, 25, "IU/L"), 50882: (25, 4, "mEq/L"), 50885: (0.8, 0.5, "mg/dL"), 50893: (9, 0.6, "mg/dL"),
    50902: (102, 5, "mEq/L"), 50910: (150, 110, "IU/L"), 50912: (1.1, 0.6, "mg/dL"), 50931: (120, 40, "mg/dL"),
    50934: (10, 12, ""), 50947: (2, 3, ""), 50960: (2, 0.3, "mg/dL"), 50970: (3.5, 0.8, "mg/dL"),
    50971: (4.2, 0.5, "mEq/L"), 50983: (139, 4, "mEq/L"), 51003: (0.05, 0.04, "ng/mL"), 51006: (20, 12, "mg/dL"),
    51133: (1.5, 0.7, "K/uL"), 51146: (0.4, 0.3, "%"), 51200: (1.5, 1.5, "%"), 51221: (37, 6, "%"),
    51222: (12, 2, "g/dL"), 51237: (1.2, 0.4, ""), 51244: (20, 10, "%"), 51248: (30, 2, "pg"),
    51249: (33, 1.5, "g/dL"), 51250: (90, 6, "fL"), 51254: (7, 2.5, "%"), 51256: (70, 12, "%"),
    51265: (230, 80, "K/uL"), 51274: (13, 3, "sec"), 51275: (32, 8, "sec"), 51277: (14, 1.5, "%"),
    51279: (4.1, 0.7, "m/uL"), 51301: (9, 4, "K/uL"), 51491: (6, 0.7, "units"), 51678: (10, 12, ""),
    52069: (0.03, 0.02, "K/uL"), 52073: (0.12, 0.1, "K/uL"), 52074: (0.6, 0.25, "K/uL"), 52075: (6.5, 3.5, "K/uL"),
    52135: (0.5, 0.4, "%"), 52172: (45, 5, "fL"),
}
PANELS = (  # (how often a draw includes it, itemids): together they cover LABS
    (0.8, (51221, 51222, 51248, 51249, 51250, 51265, 51277, 51279, 51301, 52172)),  # blood count
    (0.4, (51133, 51146, 51200, 51244, 51254, 51256, 52069, 52073, 52074, 52075, 52135)),  # differential
    (0.8, (50868, 50882, 50902, 50912, 50931, 50971, 50983, 51006)),  # chemistry
    (0.4, (50893, 50960, 50970)),
    (0.3, (51237, 51274, 51275)),  # coagulation
    (0.25, (50861, 50862, 50863, 50878, 50885, 50934, 50947, 51678)),  # liver, with the serum indices
    (0.15, (50802, 50804, 50809, 50813, 50818, 50820, 50821)),  # blood gas
    (0.2, (50910, 51003)),  # CK, troponin
    (0.05, (50852, 51491)),  # HbA1c, urine pH
)
TEXT_RESULTS = {51003: "<0.01"}  # results that are text only: valuenum blank
ED_ADMISSION_TYPES = ("EW EMER.", "EW EMER.", "URGENT", "OBSERVATION ADMIT", "EU OBSERVATION")
DIRECT_ADMISSION_TYPES = ("ELECTIVE", "SURGICAL SAME DAY ADMISSION", "URGENT", "DIRECT EMER.", "DIRECT OBSERVATION",
                          "AMBULATORY OBSERVATION")
DIRECT_LOCATIONS = ("PHYSICIAN REFERRAL", "TRANSFER FROM HOSPITAL", "CLINIC REFERRAL", "PROCEDURE SITE",
                    "WALK-IN/SELF REFERRAL")
DISCHARGE_LOCATIONS = ("HOME", "HOME", "HOME HEALTH CARE", "SKILLED NURSING FACILITY", "REHAB", "")
# ECG look-alike: P, Q, R, S, T as Gaussians (centre relative to the R peak, width, in s) with per-lead amplitudes
# (mV): leads I and II (III, aVR, aVF, aVL follow from them), then V1-V6 (R grows and S shrinks across the chest).
WAVES = np.array(((-0.17, 0.025), (-0.035, 0.01), (0.0, 0.012), (0.035, 0.012), (0.3, 0.05)))
LIMB = np.array(((0.08, -0.08, 0.9, -0.15, 0.2), (0.12, -0.05, 1.3, -0.3, 0.3)))
PRECORDIAL = np.array(((0.05, 0, 0.25, -1.0, -0.05), (0.07, 0, 0.5, -1.3, 0.2), (0.08, -0.03, 0.9, -0.9, 0.3),
                       (0.1, -0.05, 1.4, -0.5, 0.35), (0.1, -0.07, 1.3, -0.25, 0.3), (0.1, -0.07, 1.0, -0.1, 0.25)))


@dataclasses.dataclass(frozen=True)
class Admission:
    subject_id: int
    hadm_id: int
    admittime: dt.datetime
    dischtime: dt.datetime
    ed: dict[str, Any] | None  # the edstays row of an admitted ED stay; None for a direct admission


@dataclasses.dataclass(frozen=True)
class EcgStudy:
    subject_id: int
    study_id: int
    time: dt.datetime
    problem: str | None = None  # "nan" or "all_zero": a planted unusable signal
    stored: bool = True  # False: listed in record_list.csv without files

    @property
    def path(self) -> str:
        """record_list's path: ``files/p<first 4 digits of subject_id>/p<subject_id>/s<study_id>/<study_id>``."""
        subject = str(self.subject_id)
        return f"files/p{subject[:4]}/p{subject}/s{self.study_id}/{self.study_id}"


@dataclasses.dataclass(frozen=True)
class Lab:
    subject_id: int
    hadm_id: int | None
    specimen_id: int  # one per blood draw
    itemid: int
    charttime: dt.datetime
    value: str
    valuenum: str  # "" when the result is not numeric


@dataclasses.dataclass
class Hosp:
    admissions: list[Admission] = dataclasses.field(default_factory=list)
    ecgs: list[EcgStudy] = dataclasses.field(default_factory=list)
    labs: list[Lab] = dataclasses.field(default_factory=list)
    cases: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # SAMPLE.json entries


# --------------------------------------------------------------------------------------------------------------
# Content


def ecg_waveform(rng: np.random.Generator) -> np.ndarray:
    """A cheap 12-lead ECG look-alike in mV, ``mimic.ECG_SAMPLES`` x 12 in ``mimic.ECG_LEADS`` order: Gaussian P, QRS
    and T per beat (55-110 bpm with jitter, one impulse train convolved with each wave), limb leads from I and II by
    Einthoven's and Goldberger's relations, baseline wander and noise. Enough for readers, filters and plots to behave
    as on real records."""
    fs = mimic.ECG_SAMPLING_HZ
    interval = 60 / rng.uniform(55, 110)
    beats = np.arange(rng.uniform(0, interval), mimic.ECG_SAMPLES / fs, interval)
    impulses = np.zeros(mimic.ECG_SAMPLES)
    impulses[np.clip(np.rint((beats + rng.normal(0, 0.01, beats.size)) * fs).astype(int), 0,
                     mimic.ECG_SAMPLES - 1)] = 1
    lags = np.arange(-fs // 2, fs // 2 + 1) / fs  # +-0.5 s holds every wave
    kernels = np.exp(-0.5 * ((lags[:, None] - WAVES[:, 0]) / WAVES[:, 1]) ** 2)
    waves = np.stack([np.convolve(impulses, kernel, mode="same") for kernel in kernels.T], axis=1)  # samples x 5
    one, two = (waves @ LIMB.T * rng.uniform(0.7, 1.3)).T
    limb = np.stack((one, two, two - one, -(one + two) / 2, two - one / 2, one - two / 2), axis=1)
    signal = np.hstack((limb, waves @ PRECORDIAL.T * rng.uniform(0.7, 1.3)))
    t = np.arange(mimic.ECG_SAMPLES) / fs
    wander = 0.08 * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t[:, None] + rng.uniform(0, 2 * np.pi, 12))
    return signal + wander + rng.normal(0, 0.015, signal.shape)


def planted_signal(rng: np.random.Generator, problem: str | None) -> np.ndarray:
    """A usable waveform, or one the quality filter must refuse: a lead with a gap of NaN, or all zeros."""
    if problem == "all_zero":
        return np.zeros((mimic.ECG_SAMPLES, len(mimic.ECG_LEADS)))
    signal = ecg_waveform(rng)
    if problem == "nan":
        start = int(rng.integers(0, mimic.ECG_SAMPLES - 500))
        signal[start:start + 500, int(rng.integers(0, 12))] = np.nan
    return signal


def lab_result(rng: random.Random, itemid: int) -> tuple[str, str]:
    """(value, valuenum) as MIMIC spells them: a number in both, or text with a blank valuenum (about 3 % of numeric
    items are "___", de-identified text)."""
    if itemid in TEXT_RESULTS:
        return TEXT_RESULTS[itemid], ""
    if rng.random() < 0.03:
        return "___", ""
    return numeric_result(rng, itemid)


def numeric_result(rng: random.Random, itemid: int) -> tuple[str, str]:
    mean, sd, _ = LAB_VALUES[itemid]
    value = rng.gauss(mean, sd)
    text = f"{max(0.0, value) if mean > 0 else value:.{_decimals(sd)}f}"
    return text, text


def _decimals(sd: float) -> int:
    return 2 if sd < 0.1 else 1 if sd < 3 else 0


def _panel_items(rng: random.Random) -> list[int]:
    """The itemids of one blood draw: a few panels (a blood count when the draw came up empty)."""
    items = [item for share, panel in PANELS if rng.random() < share for item in panel]
    return items or list(PANELS[0][1])


def _floor_minute(value: dt.datetime) -> dt.datetime:
    return value.replace(second=0, microsecond=0)


def _minutes(rng: random.Random, low: dt.timedelta, high: dt.timedelta) -> dt.timedelta:
    return rng.randint(int(low / MINUTE), int(high / MINUTE)) * MINUTE


# --------------------------------------------------------------------------------------------------------------
# The world around the CXR studies


def frontal_dicoms(study: sample.Study) -> list[str]:
    return sorted(shot.dicom_id for shot in study.shots if shot.view in FRONTAL)


def usable(study: sample.Study) -> bool:
    """A study the pipeline reads as is: a frontal image, a good StudyTime, intact files, no repeated rows."""
    dicoms = [shot.dicom_id for shot in study.shots]
    return bool(frontal_dicoms(study)) and not study.bad_time and not study.broken_file and \
        len(set(dicoms)) == len(dicoms)


class _Builder:
    """Collects admissions, ECGs and labs; planted admissions first, then the ordinary ones, which keep their ECGs
    and labs out of the planted admissions' windows (the subject's other data must not change a planted choice)."""

    def __init__(self, world: sample.World, seed: int):
        self.rng = random.Random(f"{seed}:hosp")
        self.patients = {row["subject_id"]: row for row in world.tables["patients"]}
        self.studies: dict[int, list[sample.Study]] = {}
        for study in sorted(world.studies, key=lambda s: (s.subject_id, s.time, s.study_id)):
            self.studies.setdefault(study.subject_id, []).append(study)
        self.edstays = sorted(world.tables["edstays"], key=lambda r: (r["subject_id"], r["intime"], r["stay_id"]))
        self.ids = sample.Ids(self.rng, [s.study_id for s in world.studies] + list(self.patients) +
                              [r[key] for r in self.edstays for key in ("stay_id", "hadm_id") if r[key]])
        self.hosp = Hosp()
        self.planted: dict[int, list[dt.datetime]] = {}  # subject_id -> admittimes of its planted admissions

    def admission(self, subject_id: int, admittime: dt.datetime, ed: dict | None = None,
                  stay: dt.timedelta | None = None) -> Admission:
        hadm_id = ed["hadm_id"] if ed else self.ids.number(2)
        admission = Admission(subject_id, hadm_id, admittime, admittime + (stay or _minutes(self.rng, DAY, 12 * DAY)),
                              ed)
        self.hosp.admissions.append(admission)
        return admission

    def free(self, subject_id: int, time: dt.datetime) -> bool:
        """Outside every planted admission's ECG and lab window (with a minute to spare)."""
        return all(abs(time - admittime) > DAY + MINUTE for admittime in self.planted.get(subject_id, ()))

    def ecg(self, subject_id: int, time: dt.datetime, problem: str | None = None, stored: bool = True) -> EcgStudy:
        study = EcgStudy(subject_id, self.ids.number(4), time, problem, stored)
        self.hosp.ecgs.append(study)
        return study

    def draw(self, admission: Admission, time: dt.datetime, items: list[int], result=lab_result) -> list[Lab]:
        """One blood draw: its results share the charttime; labs drawn before admission (in the ED, outpatient) often
        carry no hadm_id, as in MIMIC-IV."""
        hadm_id = admission.hadm_id if time >= admission.admittime - 6 * HOUR and self.rng.random() < 0.9 else None
        specimen_id = self.ids.number(self.rng.randint(1, 9))
        labs = [Lab(admission.subject_id, hadm_id, specimen_id, item, time, *result(self.rng, item)) for item in items]
        self.hosp.labs += labs
        return labs

    def usual_care(self, admission: Admission, ecg_chance: float, ecg_from: dt.timedelta,
                   ecg_to: dt.timedelta) -> None:
        """ECGs (one with ``ecg_chance``, a second now and then) and lab draws of an ordinary admission, those that
        fall in no planted window."""
        for chance in (ecg_chance, ecg_chance / 8):
            time = admission.admittime + _minutes(self.rng, ecg_from, ecg_to)
            if self.rng.random() < chance and self.free(admission.subject_id, time):
                self.ecg(admission.subject_id, _floor_minute(time))
        for _ in range(self.rng.choice((0, 1, 1, 2, 3))):
            time = _floor_minute(admission.admittime + _minutes(self.rng, -30 * HOUR, 40 * HOUR))
            if self.free(admission.subject_id, time):
                self.draw(admission, time, _panel_items(self.rng))


# --------------------------------------------------------------------------------------------------------------
# Planted cases


@dataclasses.dataclass(frozen=True)
class Plan:
    """One planted admission: which CXR study can carry it, how far after admittime that study sits, the ECGs
    (offset from admittime, problem) and lab rows (itemid, offset, numeric?) it gets, and the outcome the cohort must
    give. Only the two exact plans keep the study's seconds in admittime; the others floor it to the minute."""

    case: str
    anchor: Callable[[sample.Study], bool]
    cxr_offset: Callable[[random.Random], dt.timedelta]  # anchor study time - admittime (before flooring)
    ecgs: tuple[tuple[dt.timedelta, str | None], ...] | None  # None: one usable ECG within 20 h of admittime
    labs: tuple[tuple[int, dt.timedelta, bool], ...] | None  # None: one blood draw within a few hours
    outcome: str
    exact: bool = False
    later_studies_allowed: bool = False  # later studies may share the window (the choice must not go to them)

    def admittime(self, study, rng: random.Random) -> dt.datetime:
        time = study.time - self.cxr_offset(rng)
        return time if self.exact else _floor_minute(time)


def _labelled(study: sample.Study) -> bool:
    return study.chexpert is not None


def _exact(study: sample.Study) -> bool:
    """Whole-second StudyTime: the window bound holds whether or not a reader keeps the fraction."""
    return _labelled(study) and study.time.microsecond == 0


def _between(low_hours: int, high_hours: int) -> Callable[[random.Random], dt.timedelta]:
    return lambda rng: _minutes(rng, low_hours * HOUR, high_hours * HOUR)


def _fixed(offset: dt.timedelta) -> Callable[[random.Random], dt.timedelta]:
    return lambda rng: offset


EDGE_LABS = (  # creatinine 1 s before the window and on its start, potassium on its end, sodium 1 s after it,
    # hematocrit first without a number then with one, a blood-gas glucose (not a Symile item) in the middle
    (50912, -DAY - SECOND, True), (50912, -DAY, True), (50971, DAY, True), (50983, DAY + SECOND, True),
    (51221, -HOUR, False), (51221, HOUR, True), (50809, 0 * HOUR, True))
OUTSIDE_LABS = ((50912, -DAY - SECOND, True), (50971, DAY + SECOND, True), (51221, 0 * HOUR, False),
                (50809, HOUR, True))
PLANS = (
    Plan("cxr_at_24h_excluded", _exact, _fixed(DAY), None, None, "no_cxr_in_window", exact=True),
    Plan("cxr_at_72h_included", _exact, _fixed(3 * DAY), None, None, "written", exact=True),
    Plan("cxr_tie_smallest_dicom_id", lambda s: _labelled(s) and len(set(frontal_dicoms(s))) > 1,
         _fixed(DAY + 30 * MINUTE), None, None, "written", later_studies_allowed=True),
    Plan("chosen_cxr_without_chexpert", lambda s: not _labelled(s), _fixed(DAY + 30 * MINUTE), None, None,
         "no_chexpert_row", later_studies_allowed=True),
    Plan("no_cxr_in_window", _labelled, _between(2, 20), None, None, "no_cxr_in_window"),
    Plan("ecg_at_minus_24h", _labelled, _between(30, 60), ((-DAY, None), (3 * HOUR, None)), None, "written"),
    Plan("ecg_at_plus_24h", _labelled, _between(30, 60), ((DAY, None),), None, "written"),
    Plan("ecg_after_nan_and_all_zero", _labelled, _between(30, 60),
         ((-2 * HOUR, "nan"), (-HOUR, "all_zero"), (HOUR, None), (5 * HOUR, None)), None, "written"),
    Plan("no_usable_ecg", _labelled, _between(30, 60), ((-3 * HOUR, "all_zero"), (2 * HOUR, "nan")), None,
         "no_usable_ecg"),
    Plan("no_ecg_in_window", _labelled, _between(30, 60), ((-DAY - SECOND, None), (DAY + SECOND, None)), None,
         "no_ecg_in_window"),
    Plan("labs_on_window_edges", _labelled, _between(30, 60), None, EDGE_LABS, "written"),
    Plan("no_lab_in_window", _labelled, _between(30, 60), None, OUTSIDE_LABS, "no_lab_in_window"),
)
SHARED_CXR_OFFSETS = (60 * HOUR, 30 * HOUR)  # one study in both admissions' CXR windows; ECGs and labs in one each


def _quiet(builder: _Builder, study: sample.Study, start: dt.datetime, end: dt.datetime) -> bool:
    """No other study of the subject between start and end (the planted CXR window, a minute wider on each side):
    nothing else can be chosen instead of ``study``."""
    return all(other is study or not start <= other.time <= end for other in builder.studies[study.subject_id])


def _later_labelled(builder: _Builder, study: sample.Study) -> bool:
    """A labelled study follows within 47 h: inside the window of an admission 24.5 h before ``study``."""
    return any(study.time < other.time <= study.time + 47 * HOUR and usable(other) and _labelled(other)
               for other in builder.studies[study.subject_id])


def _anchor(builder: _Builder, candidates: list[sample.Study], used: set[int],
            plan: Plan) -> tuple[sample.Study, dt.datetime] | None:
    """The first candidate study on an unused subject that fits the plan, and its admittime. For a plan that lets
    later studies into the window, studies that have such a later labelled study come first."""
    if plan.later_studies_allowed:
        candidates = sorted(candidates, key=lambda s: not _later_labelled(builder, s))
    for study in candidates:
        if study.subject_id in used or not plan.anchor(study):
            continue
        admittime = plan.admittime(study, builder.rng)
        end = study.time if plan.later_studies_allowed else admittime + 3 * DAY
        if _quiet(builder, study, admittime + DAY - MINUTE, end + MINUTE):
            return study, admittime
    return None


def _plant_admission(builder: _Builder, subject_id: int, admittime: dt.datetime, ecgs, labs,
                     stay: dt.timedelta | None = None) -> tuple[Admission, list[EcgStudy], list[Lab]]:
    admission = builder.admission(subject_id, admittime, stay=stay)
    builder.planted.setdefault(subject_id, []).append(admittime)
    ecg_specs = ecgs if ecgs is not None else ((_minutes(builder.rng, -20 * HOUR, 20 * HOUR), None),)
    planted_ecgs = [builder.ecg(subject_id, admittime + offset, problem) for offset, problem in ecg_specs]
    if labs is None:
        time = admittime + _minutes(builder.rng, -4 * HOUR, 5 * HOUR)
        items = [item for item in _panel_items(builder.rng) if item in LABS]
        return admission, planted_ecgs, builder.draw(admission, time, items, numeric_result)
    planted_labs = []
    for itemid, offset, numeric in labs:
        value, valuenum = numeric_result(builder.rng, itemid) if numeric else ("___", "")
        planted_labs.append(Lab(subject_id, admission.hadm_id, builder.ids.number(builder.rng.randint(1, 9)), itemid,
                                admittime + offset, value, valuenum))
    builder.hosp.labs += planted_labs
    return admission, planted_ecgs, planted_labs


def _expected_ecg(ecgs: list[EcgStudy], admittime: dt.datetime) -> EcgStudy | None:
    inside = sorted((e for e in ecgs if abs(e.time - admittime) <= DAY), key=lambda e: (e.time, e.study_id))
    return next((e for e in inside if e.problem is None), None)


def _expected_labs(labs: list[Lab], admittime: dt.datetime) -> dict[str, str]:
    """itemid (text, ascending) -> valuenum of the earliest numeric row in the window, for the itemids that have one."""
    chosen: dict[int, Lab] = {}
    for lab in sorted(labs, key=lambda lab: lab.charttime):
        if lab.itemid in LABS and lab.valuenum and abs(lab.charttime - admittime) <= DAY:
            chosen.setdefault(lab.itemid, lab)
    return {str(itemid): chosen[itemid].valuenum for itemid in sorted(chosen)}


def _case(case: str, admission: Admission, study: sample.Study, outcome: str, ecgs: list[EcgStudy], labs: list[Lab],
          listed_labs: bool) -> dict[str, Any]:
    """SAMPLE.json entry: the admission, its anchor study, what each rule must choose (from the planted ECGs and
    labs: the subject has no others in these windows) and the outcome."""
    in_window = DAY < study.time - admission.admittime <= 3 * DAY
    expected_cxr = frontal_dicoms(study)[0] if in_window else None
    ecg = _expected_ecg(ecgs, admission.admittime)
    entry = {
        "case": case, "subject_id": admission.subject_id, "hadm_id": admission.hadm_id,
        "admittime": mimic.format_datetime(admission.admittime), "expected_outcome": outcome,
        "expected_cxr_dicom_id": expected_cxr, "expected_cxr_study_id": study.study_id if expected_cxr else None,
        "expected_ecg_study_id": ecg.study_id if ecg else None,
        "expected_labs": _expected_labs(labs, admission.admittime),
        "cxr_study": {"study_id": study.study_id, "frontal_dicom_ids": frontal_dicoms(study),
                      "study_datetime": study.time.isoformat(sep=" "), "has_chexpert_row": _labelled(study),
                      "offset_seconds": (study.time - admission.admittime).total_seconds()},
        "ecgs": [{"study_id": e.study_id, "ecg_time": mimic.format_datetime(e.time), "problem": e.problem,
                  "offset_seconds": (e.time - admission.admittime).total_seconds()} for e in ecgs],
    }
    if listed_labs:
        entry["labs"] = [{"itemid": lab.itemid, "charttime": mimic.format_datetime(lab.charttime),
                          "valuenum": lab.valuenum,
                          "offset_seconds": (lab.charttime - admission.admittime).total_seconds()} for lab in labs]
    return entry


def _plant_shared(builder: _Builder, candidates: list[sample.Study], used: set[int]) -> None:
    """Two admissions of one patient, 30 h apart, with one labelled study in both CXR windows (both keep it)."""
    for study in candidates:
        if study.subject_id in used or not _labelled(study):
            continue
        admittimes = [_floor_minute(study.time - offset) for offset in SHARED_CXR_OFFSETS]
        if not _quiet(builder, study, admittimes[0] + DAY - MINUTE, admittimes[1] + 3 * DAY + MINUTE):
            continue
        used.add(study.subject_id)
        planted = [_plant_admission(builder, study.subject_id, admittime, ((HOUR, None),), None, stay=26 * HOUR)
                   for admittime in admittimes]
        ecgs = [e for _, admission_ecgs, _ in planted for e in admission_ecgs]
        labs = [lab for _, _, admission_labs in planted for lab in admission_labs]
        entries = [_case("shared_cxr", admission, study, "written", ecgs, labs, False) for admission, _, _ in planted]
        for entry, other in zip(entries, reversed(entries)):
            entry["shares_cxr_with_hadm_id"] = other["hadm_id"]
        builder.hosp.cases += entries
        return


def plant(builder: _Builder) -> set[int]:
    """Plant every case the world has room for, each on its own subject whose other studies keep out of the window;
    returns the subjects used. A small world may lack an anchor for some case: that case is then left out."""
    # A subject with a frontal image of unknown time (a planted bad StudyTime) has every admission that reaches the
    # CXR step rejected (join/cxr_row_rejected), whatever its case would show: such subjects carry none.
    unknown_time = {s.subject_id for studies in builder.studies.values() for s in studies
                    if s.bad_time and frontal_dicoms(s)}
    candidates = [s for subject in sorted(builder.studies) if subject in builder.patients
                  and subject not in unknown_time for s in builder.studies[subject] if usable(s)]
    builder.rng.shuffle(candidates)
    used: set[int] = set()
    for plan in PLANS:
        found = _anchor(builder, candidates, used, plan)
        if found is None:
            continue
        study, admittime = found
        used.add(study.subject_id)
        admission, ecgs, labs = _plant_admission(builder, study.subject_id, admittime, plan.ecgs, plan.labs)
        entry = _case(plan.case, admission, study, plan.outcome, ecgs, labs, plan.labs is not None)
        if plan.later_studies_allowed:
            entry["later_frontal_dicom_ids_in_window"] = [
                frontal_dicoms(s)[0] for s in builder.studies[study.subject_id]
                if study.time < s.time <= admittime + 3 * DAY and usable(s)]
        builder.hosp.cases.append(entry)
    _plant_shared(builder, candidates, used)
    return used


# --------------------------------------------------------------------------------------------------------------
# Ordinary admissions


def ordinary(builder: _Builder, planted_subjects: set[int]) -> None:
    """An admission per admitted ED stay (ECG rarely, during the ED stay), and direct admissions one to three days
    before some CXR studies of unplanted subjects (ECG usually, around admittime)."""
    rng = builder.rng
    for stay in builder.edstays:
        if not stay["hadm_id"] or stay["subject_id"] not in builder.patients:
            continue
        into = stay["intime"] + (stay["outtime"] - stay["intime"]) * rng.uniform(0.3, 0.95)
        admission = builder.admission(stay["subject_id"], _floor_minute(into), ed=stay)
        builder.usual_care(admission, 0.04, stay["intime"] - admission.admittime, dt.timedelta(0))
    studies = [s for subject in sorted(builder.studies) if subject in builder.patients and
               subject not in planted_subjects for s in builder.studies[subject] if usable(s)]
    for study in rng.sample(studies, min(len(studies), max(2, len(builder.patients) // 10))):
        admittime = _floor_minute(study.time - _minutes(rng, 25 * HOUR, 71 * HOUR))
        admission = builder.admission(study.subject_id, admittime)
        builder.usual_care(admission, 0.75, -30 * HOUR, 30 * HOUR)


def unread_ecg(builder: _Builder) -> None:
    """A record_list row without files, a year before the subject's first admission: far from every window, so a
    pipeline that reads only ECGs in some window never notices that its files are missing."""
    first = min(builder.hosp.admissions, key=lambda a: (a.admittime, a.hadm_id), default=None)
    if first is None:
        return
    ecg = builder.ecg(first.subject_id, _floor_minute(first.admittime - _minutes(builder.rng, 300 * DAY, 400 * DAY)),
                      stored=False)
    builder.hosp.cases.append({"case": "ecg_outside_windows_files_absent", "subject_id": ecg.subject_id,
                               "ecg_study_id": ecg.study_id, "ecg_time": mimic.format_datetime(ecg.time),
                               "path": ecg.path, "expected_outcome": "never_read"})


def build(world: sample.World, seed: int) -> Hosp:
    """Admissions, ECGs and labs for a synthetic world; planted cases first."""
    builder = _Builder(world, seed)
    ordinary(builder, plant(builder))
    unread_ecg(builder)
    return builder.hosp


# --------------------------------------------------------------------------------------------------------------
# Writing


def admission_rows(hosp: Hosp, rng: random.Random, races: dict[int, str]) -> list[dict[str, Any]]:
    """admissions rows: ED admissions carry the stay's times (edregtime, edouttime) and the ED's race."""
    rows = []
    for admission in hosp.admissions:
        ed = admission.ed
        rows.append({
            "subject_id": admission.subject_id, "hadm_id": admission.hadm_id, "admittime": admission.admittime,
            "dischtime": admission.dischtime,
            "admission_type": rng.choice(ED_ADMISSION_TYPES if ed else DIRECT_ADMISSION_TYPES),
            "admit_provider_id": "P" + "".join(rng.choices("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", k=5)),
            "admission_location": "EMERGENCY ROOM" if ed else rng.choice(DIRECT_LOCATIONS),
            "discharge_location": rng.choice(DISCHARGE_LOCATIONS),
            "insurance": rng.choice(("Medicare", "Medicaid", "Other")),
            "language": rng.choice(("ENGLISH",) * 4 + ("?",)),
            "marital_status": rng.choice(("MARRIED", "SINGLE", "WIDOWED", "DIVORCED", "")),
            "race": races.get(admission.subject_id) or rng.choice(("WHITE", "BLACK/AFRICAN AMERICAN", "UNKNOWN")),
            "edregtime": ed["intime"] if ed else None, "edouttime": ed["outtime"] if ed else None,
            "hospital_expire_flag": 0})
    return rows


def lab_rows(hosp: Hosp, rng: random.Random) -> list[dict[str, Any]]:
    """labevents rows: labevent_id in subject and time order, reference ranges and flags from LAB_VALUES."""
    rows = []
    ordered = sorted(hosp.labs, key=lambda lab: (lab.subject_id, lab.charttime, lab.itemid, lab.valuenum))
    for labevent_id, lab in enumerate(ordered, 10_000_000):  # one width: text order is number order
        mean, sd, unit = LAB_VALUES[lab.itemid]
        low, high = (f"{max(0.0, bound) if mean > 0 else bound:.{_decimals(sd)}f}" for bound in
                     (mean - 2 * sd, mean + 2 * sd))
        rows.append({
            "labevent_id": labevent_id, "subject_id": lab.subject_id, "hadm_id": lab.hadm_id,
            "specimen_id": lab.specimen_id, "itemid": lab.itemid,
            "order_provider_id": "P" + "".join(rng.choices("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", k=5))
            if rng.random() < 0.5 else None,
            "charttime": lab.charttime, "storetime": lab.charttime + _minutes(rng, 20 * MINUTE, 3 * HOUR),
            "value": lab.value, "valuenum": lab.valuenum, "valueuom": unit, "ref_range_lower": low,
            "ref_range_upper": high,
            "flag": "abnormal" if lab.valuenum and not float(low) <= float(lab.valuenum) <= float(high) else None,
            "priority": rng.choice(("STAT", "ROUTINE", "ROUTINE", "")),
            "comments": "___" if rng.random() < 0.05 else None})
    return rows


def write_record_list(root: Path, ecgs: list[EcgStudy]) -> None:
    """record_list.csv as MIMIC-IV-ECG ships it: plain CSV, ``\\n`` endings, one row per ECG by subject and time."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / mimic.ECG_RECORD_LIST.filename, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(mimic.ECG_RECORD_LIST.header)
        for ecg in sorted(ecgs, key=lambda e: (e.subject_id, e.time, e.study_id)):
            writer.writerow((ecg.subject_id, ecg.study_id, ecg.study_id, mimic.format_datetime(ecg.time), ecg.path))


def write(world: sample.World, roots: sample.SampleRoots, seed: int) -> dict[str, Any]:
    """Write hosp/admissions.csv.gz and hosp/labevents.csv.gz under roots.iv and the ECG tree under roots.ecg;
    return SAMPLE.json's "symile" section."""
    hosp = build(world, seed)
    rng = random.Random(f"{seed}:hosp:rows")
    races = {row["subject_id"]: row["race"] for row in world.tables["edstays"]}
    for table, rows in ((mimic.ADMISSIONS, admission_rows(hosp, rng, races)), (mimic.LABEVENTS, lab_rows(hosp, rng))):
        sample.write_table(Path(roots.iv, table.subdir, table.filename), table, rows)
    write_record_list(Path(roots.ecg), hosp.ecgs)
    signals = np.random.default_rng(random.Random(f"{seed}:hosp:ecg").getrandbits(64))
    for ecg in sorted(hosp.ecgs, key=lambda e: e.study_id):
        if ecg.stored:
            folder, name = ecg.path.rsplit("/", 1)
            write_ecg(Path(roots.ecg, folder), name, planted_signal(signals, ecg.problem))
    return manifest(hosp)


def manifest(hosp: Hosp) -> dict[str, Any]:
    """SAMPLE.json's "symile" section: the rules the expectations follow, counts, and the planted cases (an
    ``expected_outcome`` is "written" or the cohort's drop reason: no_cxr_in_window, no_chexpert_row,
    no_ecg_in_window, no_lab_in_window, no_usable_ecg)."""
    return {
        "rules": {"cxr": "earliest AP/PA image with 24 h < StudyDateTime - admittime <= 72 h (ties: smallest "
                         "dicom_id); its study's CheXpert row required, no fallback",
                  "ecg": "earliest record_list ECG with -24 h <= ecg_time - admittime <= 24 h (ties: smallest "
                         "study_id) whose signal has no NaN and is not all zero; else the next",
                  "labs": "per Symile itemid the earliest non-blank valuenum with -24 h <= charttime - admittime "
                          "<= 24 h",
                  "matched_by": "subject_id (labevents.hadm_id is ignored)"},
        "counts": {"admissions": len(hosp.admissions), "ecgs": len(hosp.ecgs),
                   "ecg_records_written": sum(e.stored for e in hosp.ecgs), "labevents": len(hosp.labs)},
        "cases": hosp.cases,
    }
