"""medfuse_ihm, medfuse_phenotyping: one record per ICU stay, its hourly time series and, when paired, an AP CXR.

Definition (cohort-definitions.md §B, on the current MIMIC-IV layout; differences from MedFuse: README, Cohorts):

    stays     icustays with one care unit, one ICU stay per admission, age >= 18 in the stay's year
              (cohorts.medfuse_stays.select_stays); IHM keeps LOS >= 48 h
    series    chartevents + labevents of the 17 variables (cohorts.medfuse_events: item map, unit cleaning), of the
              stay's admission (and stay), hours since intime in [0, T]: T = 48 h (IHM) or LOS (phenotyping);
              hourly bins, last value wins (transforms.hourly); raw values and masks always stored, the 76 imputed
              features too, normalised with train-only statistics when --normalize_timeseries
    labels    IHM: in-hospital mortality; phenotyping: 25 CCS groups from the admission's ICD codes
    CXR       the latest AP X-ray (--views must be AP) with intime <= t <= intime + 48 h (IHM) or outtime; ties:
              dicom_id. Chosen among every version of a dicom_id's metadata rows: if the chosen one's differ, the
              stay is rejected (conflicting_cxr_metadata); exact copies are one row. A subject's AP metadata row
              rejected when read (an unparseable StudyTime) rejects its stays that reach the pairing
              (cxr_row_rejected): that image may be the latest, so the next-latest would be a guess.
              Every stay is written once, paired or not (has_cxr): the paired set is has_cxr == 1
    split     subject lists shipped with MedFuse (testset_iv, valset_iv); other subjects by salted hash (counted)
    outputs   tfrecords/, manifest/, listfiles/ (MedFuse's columns), timeseries/ with --benchmark_files, rejects/,
              metadata.json (funnel, channel coverage, label prevalence, normaliser)

    Read icustays, admissions, patients, diagnoses_icd, chartevents and labevents (mapped itemids at read),
    cxr_metadata ─► SelectImages ─► CoGroupByKey(subject; with every table's rejected rows, AP metadata rows that fail
    typing too, which reject the stays that may need them: ROW_REJECTS) ─► BuildStays ─► FitNormalizer(train) ─►
    Normalize
      AssertPatientDisjoint, AssertUniqueKeys(stay_id) ─► WriteExamples (image read in the shard writer, if paired)
        └─► CountWritten ─► WriteOutputs (manifest, rejects), listfiles, timeseries CSVs, WriteMetadata
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
from collections import Counter, defaultdict
from typing import Iterable, Mapping

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import accounting, mimic
from beam_pipeline.cohorts import Cohort
from beam_pipeline.cohorts import medfuse_stays as stays_lib
from beam_pipeline.cohorts.medfuse_events import EVENT_ITEMIDS, event
from beam_pipeline.cohorts.medfuse_metadata import document, empty_message, funnel
from beam_pipeline.fileio.metadata import WriteMetadata
from beam_pipeline.fileio.outputs import (WRITTEN, Manifest, Serialize, WriteExamples, WriteOutputs, csv_line,
                                          example_plan, write_atomically)
from beam_pipeline.fileio.sharded import ShardFormat, ShardPlan, WriteShards
from beam_pipeline.fileio.sources import make_source
from beam_pipeline.fileio.tfrecord import BYTES, FLOAT, INT64, serialize_example
from beam_pipeline.options import Config
from beam_pipeline.pipeline import checks_before_images, gather, image_stage, key_by_subject, read_tables, stage
from beam_pipeline.transforms import hourly
from beam_pipeline.transforms.examples import EDGE_MAP_FEATURE, IMAGE_FEATURES, image_values, present_when
from beam_pipeline.transforms.images import SelectKeptImages, metadata_row_rejects
from beam_pipeline.transforms.join import (OneSubjectPerId, RowRejects, Unique, duplicate_events, unique_images,
                                          unique_rows)
from beam_pipeline.transforms.pixels import ProcessedImage
from beam_pipeline.transforms.split import CountPatientsAndStudies

TABLES = (mimic.CXR_METADATA, mimic.ICUSTAYS, mimic.ADMISSIONS, mimic.PATIENTS, mimic.DIAGNOSES_ICD,
          mimic.CHARTEVENTS, mimic.LABEVENTS)
ROW_FILTERS = {name: ("itemid", EVENT_ITEMIDS[name]) for name in ("chartevents", "labevents")}
LABEL_NAMES = {"ihm": ("in_hospital_mortality",), "phenotyping": stays_lib.PHENOTYPES}
EVENT_SLACK = dt.timedelta(seconds=1)  # wider than the discretiser's eps: the exact bound is applied per stay
SERIES_BYTES = 48 * (17 * 4 + 17 * 8 + 76 * 4) + 2 * 2 ** 10  # per record, for shard sizing (IHM; LOS varies)


@dataclasses.dataclass(frozen=True)
class IcuRecord:
    subject_id: int
    hadm_id: int
    stay_id: int
    intime: dt.datetime
    outtime: dt.datetime
    los_hours: float
    age: int
    hours: float  # the series' length: 48 (IHM) or LOS (phenotyping)
    n_bins: int
    values: tuple[float, ...]  # n_bins x 17 raw (NaN = not observed; categoricals as their value index)
    mask: tuple[int, ...]  # n_bins x 17
    features: tuple[float, ...]  # n_bins x 76, imputed (previous, normal values first), not normalised
    labels: tuple[int, ...]
    split: str
    split_source: str
    events: tuple[tuple[float, str, float | str], ...]  # the cleaned in-window events (benchmark CSVs)
    dicom_id: str = ""  # the paired CXR; "" when unpaired
    study_id: int = 0
    view_position: str = ""
    study_time: dt.datetime | None = None
    image_path: str = ""
    image_rows: int | None = None
    image_columns: int | None = None
    normalized: tuple[float, ...] = ()
    image: ProcessedImage | None = None

    @property
    def has_cxr(self) -> bool:
        return bool(self.dicom_id)

    def observed(self) -> list[tuple[str, int]]:
        """(channel, observed bins) of each channel observed in the series."""
        mask = np.asarray(self.mask).reshape(self.n_bins, len(hourly.CHANNELS))
        return [(channel, int(bins)) for channel, bins in zip(hourly.CHANNELS, mask.sum(axis=0)) if bins]

    def written_events(self) -> list[str]:
        """Channel coverage (stays with the channel observed, and train ones; observed bins), label prevalence,
        pairing."""
        names = [f"labels_positive/{name}" for name, y in zip(self.label_names, self.labels) if y]
        for channel, bins in self.observed():
            names += [f"channel_stays/{channel}", (f"channel_bins/{channel}", bins),
                      *([f"channel_train_stays/{channel}"] if self.split == "train" else [])]
        return names + (["paired"] if self.has_cxr else [])

    @property
    def label_names(self) -> tuple[str, ...]:
        return LABEL_NAMES["ihm" if len(self.labels) == 1 else "phenotyping"]


def stay_events(stay: stays_lib.Stay, rows, hours: float):
    """The stay's cleaned events in [0, hours] since intime: rows of its admission (labevents carry no stay_id;
    chartevents of another stay of the admission are not its own). Also the count of the subject's rows left out
    for this stay, by reason (a row of one kept stay is left out by the subject's others). A number the float32
    series cannot hold (1e39 is a finite float64) is left out like a value the cleaning drops, not stored as inf."""
    kept, left_out = [], defaultdict(int)
    for row in rows:
        if row.get("hadm_id") != stay.hadm_id or row.get("stay_id") not in (None, stay.stay_id):
            left_out["other_admission_or_stay"] += 1
            continue
        cleaned = event(row, stay.intime)
        if cleaned is None:
            left_out["value_dropped_by_cleaning"] += 1
        elif not hourly.storable(cleaned[2]):
            left_out["value_beyond_float32"] += 1
        elif not -hourly.EPS < cleaned[0] < hours + hourly.EPS:
            left_out["outside_series"] += 1
        else:
            kept.append(cleaned)
    # Values at one time in value order (numbers as numbers: a channel's values are all numbers or all text), so
    # the benchmark CSV keeps the same one as the series (the larger).
    return sorted(kept, key=lambda e: (e[0], e[1], e[2])), left_out


STAY_TABLES = (("icustays", mimic.ICUSTAYS, "stay_id"), ("admissions", mimic.ADMISSIONS, "hadm_id"),
               ("patients", mimic.PATIENTS, "subject_id"))


def stay_tables(groups) -> dict[str, Unique]:
    """A subject's icustays, admissions and patients rows by key: exact copies merged, differing rows set aside."""
    return {tag: unique_rows(groups.get(tag, ()), table.name, key) for tag, table, key in STAY_TABLES}


ROW_REJECTS = {rejects.table: rejects for rejects in (  # a reject line has no hadm_id (nor time): any admission's
    RowRejects("icustay", mimic.ICUSTAYS.name, "a rejected icustays row may be a second ICU stay of this stay's "
                                               "admission (several_icu_stays)"),
    RowRejects("admission", mimic.ADMISSIONS.name, "a rejected admissions row may be this stay's admission"),
    RowRejects("patient", mimic.PATIENTS.name, "the age and the mortality label come from the patients row"),
    RowRejects("diagnoses", mimic.DIAGNOSES_ICD.name, "a rejected diagnoses_icd row may hold a code of this stay's "
                                                      "phenotypes"),
    *(RowRejects(table.name, table.name, f"a rejected {table.name} row may be an event in this stay's series")
      for table in (mimic.CHARTEVENTS, mimic.LABEVENTS)),
    RowRejects("cxr", mimic.CXR_METADATA.name, "an AP image of unknown time may be the stay's X-ray"))}


def stay_selection(tables: dict[str, Unique], groups: Mapping[str, Iterable] | None = None
                   ) -> tuple[dict[int, tuple[str, str]], list[stays_lib.Stay], Counter]:
    """(stay_id -> (reason, detail) of the stays to reject, kept stays, drops by reason). A stay whose icustays,
    admissions or patients rows differ, or whose subject had an admissions or patients row rejected (ROW_REJECTS, in
    the subject's CoGroupByKey ``groups``), is rejected before the stay rules, which would read them (the patient's
    for the age): picking one version would make drop or keep arbitrary, and counting it no_admission / no_patient
    would hide the conflict. An admissions or patients conflict takes out every stay of its admission or subject. A stay
    set aside for its own rows still counts towards its admission's one ICU stay when every version would
    (stays_lib.counted_set_aside); when only some would, or an icustays row of the subject was rejected (its
    admission unknown), a stay the rules would keep is rejected: whether it is its admission's only one is unknown.
    Without ``groups`` (series_windows_of) the kept stays are a superset of BuildStays' own."""
    groups = groups or {}
    icu, admissions, patients = (tables[tag] for tag, _, _ in STAY_TABLES)
    problems = {stay_id: icu.conflict(stay_id) for stay_id in icu.conflicts}
    for stay_id, row in icu.rows.items():
        problem = (admissions.conflict(row["hadm_id"]) or patients.conflict(row["subject_id"])
                   or ROW_REJECTS["admissions"].problem(groups) or ROW_REJECTS["patients"].problem(groups))
        if problem:
            problems[stay_id] = problem
    counted, undecided = stays_lib.counted_set_aside(icu.conflicts)
    usable = [row for stay_id, row in icu.rows.items() if stay_id not in problems]
    kept, drops = stays_lib.select_stays(usable, admissions.rows.values(), patients.rows.values(), counted)
    for stay in kept:
        problem = ROW_REJECTS["icustays"].problem(groups) or (stay.hadm_id in undecided and (
            "sibling_stay_set_aside", f"stay_id(s) {','.join(map(str, undecided[stay.hadm_id]))} of hadm_id="
                                      f"{stay.hadm_id} set aside (conflicting_icustays), and only some of their "
                                      "versions are a single-unit stay of this admission (several_icu_stays)"))
        if problem:
            problems[stay.stay_id] = problem
    return dict(sorted(problems.items())), [stay for stay in kept if stay.stay_id not in problems], drops


def series_windows_of(element, task: str):
    """(subject_id, icustays/admissions/patients rows) -> ((subject_id, hadm_id), (stay_id, intime, end)) of each
    stay the task keeps, end = intime + 48 h (IHM) or outtime: the events worth shuffling (KeepStayEvents). Keyed
    with the subject: a hadm_id shared by two subjects' kept stays would leave one window to arrival order."""
    _, kept, _ = stay_selection(stay_tables(element[1]))
    for stay in kept:
        key = (stay.subject_id, stay.hadm_id)
        if task == "phenotyping":
            yield key, (stay.stay_id, stay.intime, stay.outtime)
        elif stays_lib.ihm_eligible(stay):
            yield key, (stay.stay_id, stay.intime, stay.intime + dt.timedelta(hours=stays_lib.IHM_HOURS))


class KeepStayEvents(beam.DoFn):
    """chartevents / labevents rows (already cut to the mapped item ids at read) -> only those of a kept stay's
    admission (and stay) within its series, decided before the shuffle: a 433 M-row chartevents shrinks to what the
    records hold, and memory per subject to its stays' hours. The rest is counted."""

    def process(self, row, windows):
        window = windows.get((row["subject_id"], row.get("hadm_id")))
        if window is None or row.get("stay_id") not in (None, window[0]):
            yield accounting.event("events/not_of_a_kept_stay")
        elif not window[1] - EVENT_SLACK <= row["charttime"] <= window[2] + EVENT_SLACK:
            yield accounting.event("events/outside_series")
        else:
            yield row


class BuildStays(beam.DoFn):
    """(subject_id, co-grouped rows) -> IcuRecord per kept stay of the task, with its series, labels, split and
    paired CXR; drops counted by reason (medfuse_stays.STAY_DROPS, then los_under_48h for IHM, no_events); stays
    whose rows conflict or may be among the rejected ones are join rejects (stay_selection; a stay the task keeps
    when a chartevents or labevents row of its subject was rejected, before its series is built or counted as
    no_events, so that no event is silently absent; a phenotyping stay also when a diagnoses_icd row was, so that
    no label is silently 0)."""

    def __init__(self, task: str, salt: str):
        self._task = task
        self._salt = salt

    def process(self, element):
        subject_id, groups = element
        tables = stay_tables(groups)
        images = unique_images(groups.get("images", ()))
        yield from duplicate_events([*tables.values(), images])
        problems, kept, drops = stay_selection(tables, groups)
        for stay_id, (reason, detail) in problems.items():
            yield accounting.event("stays")
            yield from accounting.reject("join", reason, subject_id=subject_id, detail=f"stay_id={stay_id}: {detail}",
                                         counter="rejected")
        admissions, patients = tables["admissions"].rows, tables["patients"].rows
        for reason, n in sorted(drops.items()):
            yield accounting.event("stays", n)
            yield accounting.event(f"dropped/{reason}", n)
        events = list(groups.get("events", ()))
        codes = defaultdict(list)
        for row in groups.get("diagnoses", ()):
            codes[row["hadm_id"]].append((row["icd_code"], row["icd_version"]))
        cxrs = [mimic.Image(**row) for row in images.candidates()]
        test_flags, val_flags = stays_lib.load_split_files()
        # The subject's rejected event rows (any kept stay may need one) and diagnoses rows (any phenotyping stay).
        events_problem = ROW_REJECTS["chartevents"].problem(groups) or ROW_REJECTS["labevents"].problem(groups)
        labels_problem = self._task == "phenotyping" and ROW_REJECTS["diagnoses_icd"].problem(groups)
        cxr_problem = ROW_REJECTS["cxr_metadata"].problem(groups)  # any stay's X-ray may be the unreadable one
        for stay in kept:
            yield accounting.event("stays")
            if self._task == "ihm" and not stays_lib.ihm_eligible(stay):
                yield accounting.event("dropped/los_under_48h")
                continue
            if events_problem:  # the rejected row may be an event of the series, even its only one (not no_events)
                yield from accounting.reject("join", events_problem[0], subject_id=subject_id,
                                             detail=f"stay_id={stay.stay_id}: {events_problem[1]}", counter="rejected")
                continue
            hours = stays_lib.IHM_HOURS if self._task == "ihm" else stay.los_hours
            series_events, left_out = stay_events(stay, events, hours)
            for reason, n in left_out.items():
                yield accounting.event(f"stay_events/{reason}", n)
            if not series_events:
                yield accounting.event("dropped/no_events")
                continue
            yield accounting.event("stay_events/in_series", len(series_events))
            if labels_problem:  # its labels would silently miss the rejected row's code
                yield from accounting.reject("join", labels_problem[0], subject_id=subject_id,
                                             detail=f"stay_id={stay.stay_id}: {labels_problem[1]}", counter="rejected")
                continue
            series = hourly.discretize(series_events, hours)
            if self._task == "ihm":
                labels = (stays_lib.in_hospital_mortality(stay, admissions[stay.hadm_id], patients[subject_id]),)
            else:
                labels = stays_lib.phenotype_labels(codes.get(stay.hadm_id, ()))
            if cxr_problem:  # pairing the next-latest AP image (or none) would be a guess
                yield from accounting.reject("join", cxr_problem[0], subject_id=subject_id,
                                             detail=f"stay_id={stay.stay_id}: {cxr_problem[1]}", counter="rejected")
                continue
            cxr = stays_lib.pair_cxr(stay, cxrs, self._task)
            problem = cxr and images.conflict(cxr.dicom_id)
            if problem:  # chosen among every version: which one's time, study and path are right is unknown
                yield from accounting.reject("join", problem[0], subject_id=subject_id, dicom_id=cxr.dicom_id,
                                             detail=f"stay_id={stay.stay_id}: {problem[1]}", counter="rejected")
                continue
            split, source = stays_lib.subject_split(subject_id, test_flags, val_flags, self._salt)
            yield accounting.event(f"split_source/{source}")
            image = {} if cxr is None else dict(
                dicom_id=cxr.dicom_id, study_id=cxr.study_id, view_position=cxr.view_position,
                study_time=cxr.study_time, image_path=cxr.path, image_rows=cxr.rows, image_columns=cxr.columns)
            yield IcuRecord(
                subject_id=subject_id, hadm_id=stay.hadm_id, stay_id=stay.stay_id, intime=stay.intime,
                outtime=stay.outtime, los_hours=stay.los_hours, age=stay.age, hours=hours,
                n_bins=len(series.raw), values=tuple(series.raw_array().reshape(-1).tolist()),
                mask=tuple(series.mask.reshape(-1).tolist()), features=tuple(series.features().reshape(-1).tolist()),
                labels=tuple(labels), split=split, split_source=source, events=tuple(series_events), **image)


class FitNormalizer(beam.CombineFn):
    """Train features -> hourly.Normalizer (None with fewer than 2 train hours). Exact, so order-independent."""

    def create_accumulator(self):
        return hourly.Moments()

    def add_input(self, moments, features):
        return moments + hourly.Moments.of(features)

    def merge_accumulators(self, accumulators):
        return sum(accumulators, hourly.Moments())

    def extract_output(self, moments):
        return hourly.Normalizer.from_moments(moments) if moments.count >= 2 else None


def _matrix(record: IcuRecord) -> np.ndarray:
    return np.asarray(record.features, dtype=np.float32).reshape(record.n_bins, len(hourly.feature_names()))


def with_normalized(record: IcuRecord, normalizer) -> IcuRecord:
    if normalizer is None:
        return record
    return dataclasses.replace(record, normalized=tuple(normalizer.apply(_matrix(record)).reshape(-1).tolist()))


# --------------------------------------------------------------------------------------------------------------
# Outputs

N_CHANNELS, N_FEATURES = len(hourly.CHANNELS), len(hourly.feature_names())
PAIRED = "has_cxr == 1"  # when a record has the image features (metadata.json: present_when)
FEATURES = {
    "subject_id": (INT64, (), "MIMIC subject_id"),
    "hadm_id": (INT64, (), "MIMIC-IV hadm_id"),
    "stay_id": (INT64, (), "MIMIC-IV ICU stay_id (the record key)"),
    "split": (BYTES, (), "train, val or test"),
    "intime": (BYTES, (), "ICU intime, YYYY-MM-DD HH:MM:SS[.ffffff]"),
    "outtime": (BYTES, (), "ICU outtime, YYYY-MM-DD HH:MM:SS[.ffffff] (phenotyping only)"),
    "los_hours": (FLOAT, (), "ICU length of stay in hours (phenotyping only)"),
    "age": (INT64, (), "age in the stay's year (anchor_age + year(intime) - anchor_year)"),
    "timeseries/hours": (FLOAT, (), "length of the series: 48 (IHM) or the LOS (phenotyping)"),
    "timeseries/shape": (INT64, (2,), "bins, channels (channel_order)"),
    "timeseries/values": (FLOAT, (None,), "bins x 17 raw hourly values, last in the bin; NaN = not observed; a "
                                          "categorical channel as the index of its value in the discretizer config"),
    "timeseries/mask": (INT64, (None,), "bins x 17, 1 where observed in the bin"),
    "timeseries/features": (FLOAT, (None,), "bins x 76 in feature_names order: imputed (previous; normal values "
                                            "before the first observation), one-hot categoricals, masks"),
    "labels": (INT64, (None,), "label_names order: in-hospital mortality (IHM) or the 25 phenotypes"),
    "has_cxr": (INT64, (), f"1 when an X-ray is paired (the paired set); 0: the features present_when {PAIRED} "
                           "(image/*) are absent"),
    "cxr/dicom_id": (BYTES, (), "the paired X-ray's dicom_id, empty when unpaired"),
    "cxr/study_datetime": (BYTES, (), "the paired X-ray's StudyDate + StudyTime, YYYY-MM-DD HH:MM:SS[.ffffff] (the "
                                      "fraction as StudyTime had it), empty when unpaired"),
}
# IHM predicts at intime + 48 h: when the stay ends (for those who die, about when) is future there, so its records
# leave these out (the manifest, an index rather than an input, keeps them); phenotyping's horizon is the whole stay.
STAY_END = ("outtime", "los_hours")
NORMALIZED_FEATURE = {"timeseries/normalized": (FLOAT, (None,), "timeseries/features with the continuous columns "
                                                                "standardised by the train-only normaliser")}
ALL_FEATURES = {**FEATURES, **NORMALIZED_FEATURE, **IMAGE_FEATURES, **EDGE_MAP_FEATURE}


def feature_spec(task: str, config: Config) -> dict:
    """The features of the task's records; the image ones only in a paired stay's (image_values writes none
    without an X-ray), which the spec says, so readers parse them as optional."""
    stay = {k: v for k, v in FEATURES.items() if task != "ihm" or k not in STAY_END}
    image = {**(IMAGE_FEATURES if config.images else {}), **(EDGE_MAP_FEATURE if config.images and config.edge_map
                                                             else {})}
    return {**stay, **(NORMALIZED_FEATURE if config.normalize_timeseries else {}), **present_when(PAIRED, image)}


def to_example(task: str, r: IcuRecord) -> bytes:
    values = {
        "subject_id": [r.subject_id], "hadm_id": [r.hadm_id], "stay_id": [r.stay_id], "split": [r.split.encode()],
        "intime": [mimic.format_datetime(r.intime).encode()], "outtime": [mimic.format_datetime(r.outtime).encode()],
        "los_hours": [r.los_hours], "age": [r.age], "timeseries/hours": [r.hours],
        "timeseries/shape": [r.n_bins, N_CHANNELS], "timeseries/values": r.values, "timeseries/mask": r.mask,
        "timeseries/features": r.features, "labels": r.labels, "has_cxr": [int(r.has_cxr)],
        "cxr/dicom_id": [r.dicom_id.encode()],
        "cxr/study_datetime": [mimic.format_datetime(r.study_time).encode() if r.study_time else b""],
        **image_values(r.image)}
    if r.normalized:
        values["timeseries/normalized"] = r.normalized
    if task == "ihm":
        values = {k: v for k, v in values.items() if k not in STAY_END}
    return serialize_example({name: (ALL_FEATURES[name][0], v) for name, v in values.items()})


def manifest_for(task: str) -> Manifest:
    return Manifest(
        columns=("subject_id", "hadm_id", "stay_id", "split", "intime", "outtime", "los_hours", *LABEL_NAMES[task],
                 "has_cxr", "cxr_dicom_id", "cxr_study_datetime"),
        line=lambda r: csv_line([r.subject_id, r.hadm_id, r.stay_id, r.split, mimic.format_datetime(r.intime),
                                 mimic.format_datetime(r.outtime), f"{r.los_hours:.6f}", *r.labels,
                                 int(r.has_cxr), r.dicom_id,
                                 mimic.format_datetime(r.study_time) if r.study_time else ""]),
        key=lambda r: f"{r.stay_id:012d}")


def benchmark_name(r: IcuRecord) -> str:
    return f"{r.subject_id}_episode{r.stay_id}_timeseries.csv"


def listfile_line(task: str, r: IcuRecord) -> bytes:
    """MedFuse's listfile row: stay (the timeseries file), period_length (0 for IHM, whose loader uses 48, as
    upstream writes it; the LOS in hours for phenotyping), stay_id, the label(s)."""
    period = 0 if task == "ihm" else r.los_hours
    return csv_line([benchmark_name(r), f"{period:.6f}" if period else "0", r.stay_id, *r.labels])


def timeseries_csv(r: IcuRecord) -> bytes:
    """The benchmark's per-stay CSV: Hours, then the 17 channels; one row per event time, cleaned values, empty
    where not observed at that time (upstream's pivot: the last value per variable at a time)."""
    rows: dict[float, dict[str, str]] = {}
    for hours, channel, value in r.events:
        rows.setdefault(hours, {})[channel] = value if isinstance(value, str) else repr(value)
    lines = [csv_line(["Hours", *hourly.CHANNELS])]
    lines += [csv_line([repr(h), *(rows[h].get(c, "") for c in hourly.CHANNELS)]) for h in sorted(rows)]
    return b"".join(lines)


class WriteTimeseries(beam.DoFn):
    """Written record -> its benchmark CSV at timeseries/<split>/<file> (the run folder is private until
    published, so a plain atomic write suffices); yields the file record."""

    def __init__(self, output: str):
        self._output = output

    def process(self, r: IcuRecord):
        path = FileSystems.join(self._output, "timeseries", r.split, benchmark_name(r))
        data = timeseries_csv(r)
        write_atomically(path, data)
        yield {"group": r.split, "path": path, "shard": 0, "records": data.count(b"\n") - 1, "bytes": len(data)}


def build(task: str, p: beam.Pipeline, config: Config, paths: dict[str, str], text: None, base: str,
          fail_when_empty: bool = False) -> None:
    source = make_source(config.billing_project)
    reads = read_tables(p, paths, source, row_filters=ROW_FILTERS)
    images = reads["cxr_metadata"].rows | "SelectImages" >> SelectKeptImages(config.views)
    keyed = {"images": images["images"] | "KeyImages" >> beam.Map(lambda im: (im.subject_id, im))}
    icustays = reads["icustays"].rows | "OneSubjectPerStayId" >> OneSubjectPerId(
        "stay_id", lambda r: (r["stay_id"], r["subject_id"], None), "join", unit="stays")
    rejected = {**{table: reads[table][accounting.REJECTS] for table in ROW_REJECTS},
                "cxr_metadata": metadata_row_rejects(reads["cxr_metadata"], images),
                "icustays": (reads["icustays"][accounting.REJECTS], icustays[accounting.REJECTS])
                | "IcustaysRejects" >> beam.Flatten()}
    for tag, rows in (("icustays", icustays.rows), ("admissions", reads["admissions"].rows),
                      ("patients", reads["patients"].rows), ("diagnoses", reads["diagnoses_icd"].rows)):
        keyed[tag] = key_by_subject(f"Key {tag}", rows)
    for table, rejects in rejected.items():
        keyed[ROW_REJECTS[table].tag] = ROW_REJECTS[table].keyed(rejects)
    series_windows = ({tag: keyed[tag] for tag in ("icustays", "admissions", "patients")}
                      | "CoGroupStays" >> beam.CoGroupByKey()
                      | "SeriesWindows" >> beam.FlatMap(series_windows_of, task))
    events = ((reads["chartevents"].rows, reads["labevents"].rows) | "AllEventRows" >> beam.Flatten()
              | "KeepStayEvents" >> beam.ParDo(KeepStayEvents(), beam.pvalue.AsDict(series_windows))
              .with_outputs(accounting.EVENTS, main="rows"))
    keyed["events"] = key_by_subject("Key events", events.rows)
    built = stage(keyed | "CoGroupBySubject" >> beam.CoGroupByKey(), "BuildStays", BuildStays(task, config.split_salt))
    train = built.records | "Train" >> beam.Filter(lambda r: r.split == "train")
    normalizer = train | "TrainFeatures" >> beam.Map(_matrix) | "FitNormalizer" >> beam.CombineGlobally(FitNormalizer())
    fitted = train | "FittedChannels" >> beam.FlatMap(  # the fit's stays per channel (the card's gate)
        lambda r: [accounting.count(f"normalizer_stays/{channel}") for channel, _ in r.observed()])
    records = built.records
    if config.normalize_timeseries:
        records = records | "Normalize" >> beam.Map(with_normalized, beam.pvalue.AsSingleton(normalizer))
    checks = checks_before_images(records, key=lambda r: r.stay_id)
    image_settings, loader = image_stage(config, source)
    examples = records | "WriteExamples" >> WriteExamples(
        config.output, example_plan(config.target_shard_mb, image_settings, SERIES_BYTES), config.compression,
        loader, Serialize(functools.partial(to_example, task)), key=lambda r: f"{r.stay_id:012d}", after=checks)
    final = stage(examples[WRITTEN], "CountWritten", accounting.CountWritten())
    patients = final.records | "CountPatientsAndStudies" >> CountPatientsAndStudies()
    listfiles = (final.records | "ToListfileRow" >> beam.Map(
        lambda r: (r.split, f"{r.stay_id:012d}", listfile_line(task, r)))
        | "WriteListfiles" >> WriteShards(
            FileSystems.join(config.output, "listfiles"), mimic.SPLITS,
            ShardFormat("_listfile.csv", header=csv_line(("stay", "period_length", "stay_id",
                                                          *(("y_true",) if task == "ihm" else LABEL_NAMES[task])))),
            ShardPlan(math.inf)))
    rejects, counted, input_files = gather(reads, [images, icustays, built, examples, final],
                                           [events[accounting.EVENTS], patients, fitted])
    written = [examples["files"], listfiles,
               {"records": final.records, "rejects": rejects} | "WriteOutputs" >> WriteOutputs(
                   config.output, manifest_for(task))]
    if config.benchmark_files:
        written.append(final.records | "WriteTimeseries" >> beam.ParDo(WriteTimeseries(config.output)))
    files = written | "Written" >> beam.Flatten()
    (counted, input_files, files, normalizer) | "WriteMetadata" >> WriteMetadata(
        config, base, functools.partial(document, task, config, feature_spec(task, config)), empty_message,
        fail_when_empty)


def check(config: Config) -> list[str]:
    """The split is MedFuse's lists with a fixed hash fallback and the pairing takes AP X-rays: a flag that would
    change either must not pass silently (metadata.json's config would show a split or views that were not used)."""
    problems = []
    if tuple(config.views) != stays_lib.CXR_VIEWS:
        problems.append(f"--cohort={config.cohort} pairs AP X-rays only (MedFuse); --views="
                        f"{','.join(config.views)} does not apply")
    if config.split_strategy != "hash":
        problems.append(f"--cohort={config.cohort} splits by MedFuse's subject lists (hash for subjects not in "
                        "them); --split_strategy=official does not apply")
    if tuple(config.split_fractions) != stays_lib.HASH_FALLBACK_FRACTIONS:
        problems.append(f"--cohort={config.cohort} splits by MedFuse's subject lists and the subjects in neither by "
                        f"the lists' own fractions {_fractions(stays_lib.HASH_FALLBACK_FRACTIONS)}; "
                        f"--split_fractions={_fractions(config.split_fractions)} does not apply")
    return problems


def _fractions(values) -> str:
    return ",".join(map(str, values))


def _cohort(task: str, description: str) -> Cohort:
    return Cohort(
        name=f"medfuse_{task}", description=description, roots=("mimic_iv_root",),
        defaults={"views": stays_lib.CXR_VIEWS, "image_size": 224, "resize_mode": "crop", "split_strategy": "hash",
                  "split_fractions": stays_lib.HASH_FALLBACK_FRACTIONS, "split_salt": "medfuse-v1"},
        tables=lambda config: list(TABLES), build=functools.partial(build, task), funnel=funnel,
        empty_message=empty_message, check=check)


COHORTS = {
    "medfuse_ihm": _cohort("ihm", "MedFuse in-hospital mortality: ICU stays (first 48 h) with an AP CXR when paired"),
    "medfuse_phenotyping": _cohort("phenotyping", "MedFuse phenotyping: ICU stays (whole stay), 25 CCS phenotypes, "
                                                  "an AP CXR when paired"),
}
