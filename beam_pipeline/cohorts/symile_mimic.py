"""symile_mimic: one record per hospital admission with a chest X-ray, a 12-lead ECG and 50 labs (Symile-MIMIC).

Definition (cohort-definitions.md §A; what differs from the original and why: README, Cohorts):

    anchor    admissions.admittime (left-joined with patients: age = anchor_age + year(admittime) - anchor_year)
    CXR       CXR_WINDOW over --views images (AP, PA); its study's CheXpert row required (no fallback, as the original)
    ECG       ECG_WINDOW over record_list; the first whose signal has no NaN and is not all zero (WFDB read only for
              admissions that qualify otherwise, in window order, until one passes)
    labs      LAB_WINDOW per itemid of mimic.SYMILE_LAB_ITEMIDS (ascending itemid: the order of every lab vector)
    drops     counted in that order: no_cxr_in_window, no_chexpert_row, no_ecg_in_window, no_lab_in_window,
              no_usable_ecg; bad rows, conflicts and unreadable images/ECGs (an unreadable in-window ECG before the
              first usable one too) are rejects, as is an admission that
              could have used a row rejected at read (ROW_REJECTS) or whose chosen lab float32 cannot hold (1e39),
              never given the next-best row instead
    split     patient-level hash split (no discarded rows); lab percentiles from an ECDF fitted on train only
    outputs   tfrecords/ (CXR, 320 px centre crop by default; ECG float32 5000x12 mV), manifest/, candidates/ (val and
              test retrieval sets from the written records), rejects/, metadata.json (funnel, ECDF summary)

    Read admissions, patients, cxr_chexpert, ecg_record_list, cxr_metadata ─► SelectImages ─┐
    Read labevents (50 itemids at read) ─► KeepSubjectsWithImages (side input) ─────────────┼─► CoGroupByKey(subject)
      (+ reject lines of patients, record_list, labevents, CheXpert, kept-view metadata, keyed by subject)
      SelectAdmissions (windows, choices) ─► CheckEcgs ─► AssignSplits ─► FitEcdf(train) ─► ApplyEcdf
        AssertPatientDisjoint, AssertUniqueKeys(hadm_id) ─► WriteExamples (image + ECG read in the shard writer)
          └─► CountWritten ─► WriteOutputs (manifest, rejects), WriteCandidateSets, WriteMetadata
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
from collections import defaultdict
from typing import NamedTuple

import apache_beam as beam
import numpy as np

from beam_pipeline import accounting, mimic
from beam_pipeline.cohorts import Cohort
from beam_pipeline.cohorts.symile_metadata import DATASET, DROPS, document, empty_message, funnel
from beam_pipeline.fileio.metadata import WriteMetadata
from beam_pipeline.fileio.outputs import WRITTEN, Manifest, WriteExamples, WriteOutputs, csv_line, example_plan
from beam_pipeline.fileio.sources import make_source
from beam_pipeline.fileio.tfrecord import BYTES, FLOAT, INT64, serialize_example
from beam_pipeline.options import Config
from beam_pipeline.pipeline import checks_before_images, gather, image_stage, key_by_subject, read_tables, stage
from beam_pipeline.transforms import hourly
from beam_pipeline.transforms.candidates import WriteCandidateSets
from beam_pipeline.transforms.ecdf import FitEcdf, apply_ecdf
from beam_pipeline.transforms.ecg import EcgFormatError, minmax_scale, quality_problem, read_ecg
from beam_pipeline.transforms.examples import EDGE_MAP_FEATURE, IMAGE_FEATURES, image_values
from beam_pipeline.transforms.images import SelectKeptImages, metadata_row_rejects
from beam_pipeline.transforms.join import (KeyLabelRejects, OneSubjectPerId, RowRejects, duplicate_events,
                                          label_problem, rejected_labels, unique_images, unique_rows)
from beam_pipeline.transforms.pixels import ProcessedImage
from beam_pipeline.transforms.split import AssignSplits, CountPatientsAndStudies
from beam_pipeline.transforms.windows import Window, choose, in_window

CXR_WINDOW = Window("admittime", 24, 72, lower_inclusive=False, choice="earliest", tie_break="dicom_id")
ECG_WINDOW = Window("admittime", -24, 24, choice="earliest", tie_break="study_id")
LAB_WINDOW = Window("admittime", -24, 24, choice="earliest", tie_break="labevent_id")
WINDOWS = {"cxr": CXR_WINDOW, "ecg": ECG_WINDOW, "labs": LAB_WINDOW}
LABS = mimic.SYMILE_LAB_ITEMIDS
TABLES = (mimic.CXR_METADATA, mimic.CXR_CHEXPERT, mimic.ADMISSIONS, mimic.PATIENTS, mimic.LABEVENTS,
          mimic.ECG_RECORD_LIST)
LAB_FILTER = ("itemid", frozenset(map(str, LABS)))
ECG_BYTES = mimic.ECG_SAMPLES * len(mimic.ECG_LEADS) * 4 + 4 * 2 ** 10  # float32 signal + ids, labs, labels
SYMILE_LABEL_INDEX = tuple(mimic.LABELS.index(name) for name in mimic.SYMILE_LABELS)


class Ecg(NamedTuple):
    study_id: int
    time: dt.datetime
    path: str  # record_list path, no extension


@dataclasses.dataclass(frozen=True)
class Admission:
    subject_id: int
    hadm_id: int
    admittime: dt.datetime
    age: int | None  # None without a patients row
    gender: str
    dicom_id: str  # the chosen CXR (field names shared with the image stage)
    study_id: int
    view_position: str
    study_time: dt.datetime
    image_path: str
    image_rows: int | None
    image_columns: int | None
    chexpert: tuple[float, ...]  # 14 raw CheXpert values in mimic.LABELS order, NaN = blank
    ecgs: tuple[Ecg, ...]  # in-window ECGs best first; after CheckEcgs only the chosen one
    labs: tuple[float | None, ...]  # raw valuenum per LABS itemid, None = none in window
    percentiles: tuple[float, ...] = ()
    observed: tuple[int, ...] = ()
    split: str | None = None
    official_split: str | None = None  # unused: this cohort splits by patient hash
    image: ProcessedImage | None = None

    @property
    def ecg(self) -> Ecg:
        return self.ecgs[0]

    def written_events(self) -> list[str]:
        """Lab coverage of the written records, per itemid (the data card's table)."""
        return [f"labs_observed/{itemid}" for itemid, value in zip(LABS, self.labs) if value is not None]


# --------------------------------------------------------------------------------------------------------------
# Selection (pure, per admission)

def earliest_labs(admittime: dt.datetime, labs_by_item: dict[int, list[dict]]) -> tuple[dict | None, ...]:
    """Per itemid (LABS order) the labevents row of the LAB_WINDOW choice, or None."""
    return tuple(choose(LAB_WINDOW, admittime, labs_by_item.get(itemid, ()), lambda r: r["charttime"],
                        lambda r: r["labevent_id"]) for itemid in LABS)


def beyond_float32(labs: tuple[dict | None, ...]) -> tuple[str, str] | None:
    """The problem of the first chosen lab row whose valuenum labs/values (float32) cannot hold: 1e39 is a finite
    float64 but would be written as inf, while the manifest says 1e+39."""
    row = next((r for r in labs if r and not hourly.storable(r["valuenum"])), None)
    if row is None:
        return None
    return "lab_value_beyond_float32", (f"labevents labevent_id={row['labevent_id']} (itemid {row['itemid']}): "
                                        f"valuenum={row['valuenum']!r} is beyond float32")


def age(patient: dict | None, admittime: dt.datetime) -> int | None:
    if patient is None:
        return None
    return mimic.age_at(patient["anchor_age"], patient["anchor_year"], admittime.year)


ROW_REJECTS = {rejects.table: rejects for rejects in (
    RowRejects("patient", mimic.PATIENTS.name, "age and gender come from the patients row"),
    RowRejects("cxr", mimic.CXR_METADATA.name, "a kept-view image of unknown time may be the CXR"),
    RowRejects("ecg", mimic.ECG_RECORD_LIST.name, "a record_list row of unknown time may be an ECG"),
    RowRejects("lab", mimic.LABEVENTS.name, "a labevents row of unknown time may be the lab"))}
"""Rows rejected at read (kept-view images: at metadata/) of a subject: a reject line holds ids, not times, so any
of them may be the row an admission's choice should have been; each rejects the admissions that reach its step."""


class SelectAdmissions(beam.DoFn):
    """(subject_id, co-grouped rows) -> Admission per admission that has a CXR with labels, an ECG candidate and a
    lab in its windows; the others are counted by the first reason (DROPS order). Step by step (patients, CXR, ECG,
    labs), an admission that reaches a step is rejected rather than given the next-best choice when the row it
    needs conflicts (admissions, patients, the chosen CXR's metadata or CheXpert row, an in-window record_list row,
    a chosen labevents row), may be a row rejected at read (ROW_REJECTS; CheXpert: join.label_problem), or is a
    chosen lab whose value float32 cannot hold (beyond_float32)."""

    def process(self, element):
        subject_id, groups = element
        tables = {tag: unique_rows(groups.get(tag, ()), table.name, key) for tag, table, key in (
            ("admissions", mimic.ADMISSIONS, "hadm_id"), ("patients", mimic.PATIENTS, "subject_id"),
            ("labels", mimic.CXR_CHEXPERT, "study_id"), ("ecgs", mimic.ECG_RECORD_LIST, "study_id"),
            ("labs", mimic.LABEVENTS, "labevent_id"))}
        images = unique_images(groups.get("images", ()))
        yield from duplicate_events([*tables.values(), images])
        admissions, patients, labels = (tables[t] for t in ("admissions", "patients", "labels"))
        ecg_rows, lab_rows = tables["ecgs"], tables["labs"]
        cxrs = [mimic.Image(**row) for row in images.candidates()]
        ecgs = [Ecg(r["study_id"], r["ecg_time"], r["path"]) for r in ecg_rows.candidates()]
        labs_by_item: dict[int, list[dict]] = defaultdict(list)
        for row in lab_rows.candidates():
            labs_by_item[row["itemid"]].append(row)
        labels_rejected = rejected_labels(groups)
        rejected = {rejects.name: rejects.problem(groups) for rejects in ROW_REJECTS.values()}
        for hadm_id in sorted([*admissions.rows, *admissions.conflicts]):
            yield accounting.event("admissions")
            adm = admissions.rows.get(hadm_id)
            cxr = reason = None
            problem = admissions.conflict(hadm_id) or patients.conflict(subject_id) or rejected["patient"]
            if not problem:
                admittime = adm["admittime"]
                cxr = choose(CXR_WINDOW, admittime, cxrs, lambda im: im.study_time, lambda im: im.dicom_id)
                problem = rejected["cxr"] or (None if cxr is None else images.conflict(cxr.dicom_id)
                                              or label_problem(cxr.study_id, labels, labels_rejected))
                reason = ("no_cxr_in_window" if cxr is None else
                          "no_chexpert_row" if cxr.study_id not in labels.rows else None)
            if not (problem or reason):
                candidates = in_window(ECG_WINDOW, admittime, ecgs, lambda e: e.time, lambda e: e.study_id)
                problem = rejected["ecg"] or next(
                    (ecg_rows.conflict(e.study_id) for e in candidates if e.study_id in ecg_rows.conflicts), None)
                reason = None if candidates else "no_ecg_in_window"
            if not (problem or reason):
                labs = earliest_labs(admittime, labs_by_item)
                problem = rejected["lab"] or next(
                    (lab_rows.conflict(r["labevent_id"]) for r in labs if r and r["labevent_id"] in lab_rows.conflicts),
                    None) or beyond_float32(labs)
                reason = "no_lab_in_window" if all(r is None for r in labs) else None
            if problem:
                yield from accounting.reject("join", problem[0], subject_id=subject_id,
                                             study_id=cxr.study_id if cxr else None,
                                             dicom_id=cxr.dicom_id if cxr else None,
                                             detail=f"hadm_id={hadm_id}: {problem[1]}", counter="rejected")
                continue
            if reason:
                yield accounting.event(f"dropped/{reason}")
                continue
            row = labels.rows[cxr.study_id]
            patient = patients.rows.get(subject_id)
            yield Admission(
                subject_id=subject_id, hadm_id=hadm_id, admittime=admittime, age=age(patient, admittime),
                gender=(patient or {}).get("gender") or "", dicom_id=cxr.dicom_id, study_id=cxr.study_id,
                view_position=cxr.view_position, study_time=cxr.study_time, image_path=cxr.path,
                image_rows=cxr.rows, image_columns=cxr.columns,
                chexpert=tuple(math.nan if row[name] is None else float(row[name]) for name in mimic.LABELS),
                ecgs=tuple(candidates), labs=tuple(None if r is None else r["valuenum"] for r in labs))


class CheckEcgs(beam.DoFn):
    """Admission -> the same with its first usable in-window ECG (no NaN, not all zero, 5000 x 12 at 500 Hz), or
    counted as no_usable_ecg. An ECG that cannot be read before one is found rejects the admission (stage ecg), as
    a missing JPEG does: it may have been the first usable one, so the next would be a guess."""

    def __init__(self, ecg_root: str, source):
        self._root = ecg_root
        self._source = source

    def process(self, admission: Admission):
        for ecg in admission.ecgs:
            try:
                problem = quality_problem(read_ecg(self._source, self._root, ecg.path))
            except (OSError, EcgFormatError) as err:
                yield accounting.event("ecg_checked/unreadable")
                yield from accounting.reject("ecg", "unreadable_ecg", subject_id=admission.subject_id,
                                             study_id=admission.study_id, dicom_id=admission.dicom_id,
                                             detail=f"hadm_id={admission.hadm_id} ecg {ecg.path}: "
                                                    f"{type(err).__name__}: {err}")
                return
            yield accounting.event(f"ecg_checked/{problem or 'usable'}")
            if problem is None:
                yield dataclasses.replace(admission, ecgs=(ecg,))
                return
        yield accounting.event("dropped/no_usable_ecg")


class KeepSubjectsWithImages(beam.DoFn):
    """Lab rows of subjects without a kept-view image cannot be in any record: dropped (counted) before the
    shuffle, as are rows without a numeric value (the original drops them too)."""

    def process(self, row, subjects):
        if row["valuenum"] is None:
            yield accounting.event("labs/without_valuenum")
        elif row["subject_id"] not in subjects:
            yield accounting.event("labs/subject_without_image")
        else:
            yield accounting.event("labs/kept")
            yield row


def with_percentiles(admission: Admission, ecdf) -> Admission:
    percentiles, observed = apply_ecdf(ecdf, admission.labs)
    return dataclasses.replace(admission, percentiles=percentiles, observed=observed)


# --------------------------------------------------------------------------------------------------------------
# Outputs

FEATURES = {
    "subject_id": (INT64, (), "MIMIC subject_id"),
    "hadm_id": (INT64, (), "MIMIC-IV hadm_id (the record key)"),
    "split": (BYTES, (), "train, val or test"),
    "admittime": (BYTES, (), "admission time, YYYY-MM-DD HH:MM:SS[.ffffff]"),
    "age": (INT64, (), "anchor_age + year(admittime) - anchor_year; -1 without a patients row"),
    "gender": (BYTES, (), "patients.gender; empty without a patients row"),
    "dicom_id": (BYTES, (), "the chosen CXR's dicom_id"),
    "study_id": (INT64, (), "the chosen CXR's study_id"),
    "view_position": (BYTES, (), "AP or PA"),
    "study_datetime": (BYTES, (), "the CXR's StudyDate + StudyTime, YYYY-MM-DD HH:MM:SS[.ffffff]"),
    "image/path": (BYTES, (), "source JPEG path relative to the MIMIC-CXR-JPG root"),
    "labels/chexpert": (FLOAT, (len(mimic.LABELS),), "raw CheXpert values in label_order: 1, 0, -1 or NaN"),
    "labels/symile": (FLOAT, (len(mimic.SYMILE_LABELS),), "the 6 labels the original keeps, raw, in "
                                                          "symile_label_order"),
    "ecg/signal": (FLOAT, (mimic.ECG_SAMPLES * len(mimic.ECG_LEADS),),
                   "12-lead ECG, row-major samples x leads (reshape with ecg/shape), mV or min-max scaled"),
    "ecg/shape": (INT64, (2,), "samples, leads"),
    "ecg/lead_names": (BYTES, (len(mimic.ECG_LEADS),), "lead of each column"),
    "ecg/sampling_hz": (FLOAT, (), "samples per second"),
    "ecg/scaling": (BYTES, (), "none (mV) or minmax (2 * (x - min) / (max - min) - 1)"),
    "ecg/min": (FLOAT, (), "minimum of the recorded signal in mV (all leads)"),
    "ecg/max": (FLOAT, (), "maximum of the recorded signal in mV (all leads)"),
    "ecg/study_id": (INT64, (), "MIMIC-IV-ECG study_id"),
    "ecg/time": (BYTES, (), "ecg_time, YYYY-MM-DD HH:MM:SS[.ffffff]"),
    "ecg/path": (BYTES, (), "record path relative to the MIMIC-IV-ECG root, no extension"),
    "labs/values": (FLOAT, (len(LABS),), "raw valuenum per itemid (lab_itemids order), NaN when not measured"),
    "labs/percentiles": (FLOAT, (len(LABS),), "train-ECDF percentile; the train mean percentile when missing"),
    "labs/observed": (INT64, (len(LABS),), "1 when measured in the window (the original's 'missingness' tensor)"),
}


ALL_FEATURES = {**FEATURES, **IMAGE_FEATURES, **EDGE_MAP_FEATURE}


def feature_spec(config: Config) -> dict:
    return {**FEATURES, **(IMAGE_FEATURES if config.images else {}),
            **(EDGE_MAP_FEATURE if config.images and config.edge_map else {})}


class EncodeAdmission:
    """The shard writer's encoder: reads the chosen ECG again (it was only checked before the split; ``fetch``, on
    the writer's read-ahead threads) and serialises the Example; an ECG that cannot be read now rejects the
    admission."""

    def __init__(self, ecg_root: str, source, scaling: str):
        self._root = ecg_root
        self._source = source
        self._scaling = scaling

    def setup(self):
        pass

    def fetch(self, r: Admission):
        """The chosen ECG, or the OSError / EcgFormatError its read raised (``encode`` makes it a reject)."""
        try:
            return read_ecg(self._source, self._root, r.ecg.path)
        except (OSError, EcgFormatError) as err:
            return err

    def encode(self, r: Admission, ecg) -> tuple[bytes | None, list]:
        """``ecg``: what ``fetch`` returned for this admission."""
        if isinstance(ecg, (OSError, EcgFormatError)):
            return None, list(accounting.reject(
                "ecg", "unreadable_ecg", subject_id=r.subject_id, study_id=r.study_id, dicom_id=r.dicom_id,
                detail=f"hadm_id={r.hadm_id} ecg {r.ecg.path}: {type(ecg).__name__}: {ecg}", counter="rejected"))
        signal = ecg.signal
        low, high = float(np.min(signal)), float(np.max(signal))
        if self._scaling == "minmax":
            signal = minmax_scale(signal)[0]
        values = {
            "subject_id": [r.subject_id], "hadm_id": [r.hadm_id], "split": [r.split.encode()],
            "admittime": [mimic.format_datetime(r.admittime).encode()], "age": [-1 if r.age is None else r.age],
            "gender": [r.gender.encode()], "dicom_id": [r.dicom_id.encode()], "study_id": [r.study_id],
            "view_position": [r.view_position.encode()],
            "study_datetime": [mimic.format_datetime(r.study_time).encode()], "image/path": [r.image_path.encode()],
            "labels/chexpert": r.chexpert, "labels/symile": [r.chexpert[i] for i in SYMILE_LABEL_INDEX],
            "ecg/signal": signal.reshape(-1).tolist(), "ecg/shape": list(signal.shape),
            "ecg/lead_names": [name.encode() for name in mimic.ECG_LEADS],
            "ecg/sampling_hz": [float(mimic.ECG_SAMPLING_HZ)], "ecg/scaling": [self._scaling.encode()],
            "ecg/min": [low], "ecg/max": [high], "ecg/study_id": [r.ecg.study_id],
            "ecg/time": [mimic.format_datetime(r.ecg.time).encode()], "ecg/path": [r.ecg.path.encode()],
            "labs/values": [math.nan if v is None else v for v in r.labs], "labs/percentiles": r.percentiles,
            "labs/observed": r.observed, **image_values(r.image)}
        return serialize_example({name: (ALL_FEATURES[name][0], v) for name, v in values.items()}), []


MANIFEST = Manifest(
    columns=("subject_id", "hadm_id", "split", "admittime", "cxr_dicom_id", "cxr_study_id", "cxr_study_datetime",
             "ecg_study_id", "ecg_time", "ecg_path") + tuple(map(str, LABS)),
    line=lambda r: csv_line([r.subject_id, r.hadm_id, r.split, mimic.format_datetime(r.admittime), r.dicom_id,
                             r.study_id, mimic.format_datetime(r.study_time), r.ecg.study_id,
                             mimic.format_datetime(r.ecg.time), r.ecg.path]
                            + ["" if v is None else repr(v) for v in r.labs]),
    key=lambda r: f"{r.hadm_id:012d}")


# --------------------------------------------------------------------------------------------------------------
# The graph

def build(p: beam.Pipeline, config: Config, paths: dict[str, str], text: None, base: str,
          fail_when_empty: bool = False) -> None:
    source = make_source(config.billing_project)
    reads = read_tables(p, paths, source, row_filters={mimic.LABEVENTS.name: LAB_FILTER})
    images = reads["cxr_metadata"].rows | "SelectImages" >> SelectKeptImages(config.views)
    subjects = (images["images"] | "ImageSubjects" >> beam.Map(lambda im: (im.subject_id, None))
                | "DistinctSubjects" >> beam.CombinePerKey(lambda _: None))
    labs = reads["labevents"].rows | "KeepSubjectsWithImages" >> beam.ParDo(
        KeepSubjectsWithImages(), beam.pvalue.AsDict(subjects)).with_outputs(accounting.EVENTS, main="labs")
    keyed = {"images": images["images"] | "KeyImages" >> beam.Map(lambda im: (im.subject_id, im)),
             "labs": key_by_subject("Key labs", labs.labs),
             "rejected_labels": reads["cxr_chexpert"][accounting.REJECTS]
             | "Key rejected_labels" >> KeyLabelRejects(images["images"])}
    metadata_rejects = metadata_row_rejects(reads[mimic.CXR_METADATA.name], images)
    for table, rejects in ROW_REJECTS.items():
        keyed[rejects.tag] = rejects.keyed(metadata_rejects if table == mimic.CXR_METADATA.name
                                           else reads[table][accounting.REJECTS])
    admissions = reads["admissions"].rows | "OneSubjectPerHadmId" >> OneSubjectPerId(
        "hadm_id", lambda r: (r["hadm_id"], r["subject_id"], None), "join", unit="admissions")
    for tag, rows in (("admissions", admissions.rows), ("patients", reads["patients"].rows),
                      ("labels", reads["cxr_chexpert"].rows), ("ecgs", reads["ecg_record_list"].rows)):
        keyed[tag] = key_by_subject(f"Key {tag}", rows)
    selected = stage(keyed | "CoGroupBySubject" >> beam.CoGroupByKey(), "SelectAdmissions", SelectAdmissions())
    checked = stage(selected.records, "CheckEcgs", CheckEcgs(config.mimic_ecg_root, source))
    split = checked.records | "AssignSplits" >> AssignSplits("hash", config.split_salt, config.split_fractions)
    ecdf = (split.records | "Train" >> beam.Filter(lambda r: r.split == "train")
            | "TrainLabs" >> beam.Map(lambda r: r.labs) | "FitEcdf" >> FitEcdf(LABS))
    records = split.records | "ApplyEcdf" >> beam.Map(with_percentiles, beam.pvalue.AsSingleton(ecdf))
    checks = checks_before_images(records, key=lambda r: r.hadm_id)
    image_settings, loader = image_stage(config, source)
    examples = records | "WriteExamples" >> WriteExamples(
        config.output, example_plan(config.target_shard_mb, image_settings, ECG_BYTES), config.compression, loader,
        EncodeAdmission(config.mimic_ecg_root, source, config.ecg_scaling), key=lambda r: f"{r.hadm_id:012d}",
        after=checks)
    final = stage(examples[WRITTEN], "CountWritten", accounting.CountWritten())
    candidates = (final.records | "QueryIds" >> beam.Map(lambda r: (r.split, r.hadm_id))
                  | "WriteCandidateSets" >> WriteCandidateSets(config.output, ("val", "test"),
                                                               config.candidate_seed, config.candidate_negatives))
    patients = final.records | "CountPatientsAndStudies" >> CountPatientsAndStudies()
    rejects, events, input_files = gather(reads, [images, admissions, selected, checked, split, examples, final],
                                          [labs[accounting.EVENTS], candidates["events"], patients])
    files = ((examples["files"], candidates["files"],
              {"records": final.records, "rejects": rejects} | "WriteOutputs" >> WriteOutputs(config.output, MANIFEST))
             | "Written" >> beam.Flatten())
    (events, input_files, files, ecdf) | "WriteMetadata" >> WriteMetadata(
        config, base, functools.partial(document, config, feature_spec(config), WINDOWS), empty_message,
        fail_when_empty)


def check(config: Config) -> list[str]:
    if config.split_strategy != "hash":
        return ["--cohort=symile_mimic splits by patient (--split_strategy=hash); the official split file is per "
                "image"]
    return []


COHORTS = {"symile_mimic": Cohort(
    name="symile_mimic",
    description=DATASET,
    roots=("mimic_iv_root", "mimic_ecg_root"),
    defaults={"image_size": 320, "resize_mode": "crop", "split_strategy": "hash",
              "split_fractions": (0.86, 0.065, 0.075), "split_salt": "symile-mimic-v1"},
    tables=lambda config: list(TABLES),
    build=build,
    funnel=funnel,
    empty_message=empty_message,
    check=check,
)}
