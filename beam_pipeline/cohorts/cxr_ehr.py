"""cxr_ehr: one record per CXR image with the EHR variables known when it was taken (CXR-EHR-MSN).

Definition (cohort-definitions.md §C; differences from the original: README, Cohorts):

    record    every --views image (all views by default, blank ViewPosition included) of a subject with a
              patients row and a gender
    features  gender, age in the study's year, 5- and 10-year bins, view and orientation one-hots ("missing" is its
              own category, never imputed), the admission and ICU stay the image falls in (--ehr_match: time, the
              default, or date as the original; ties: latest start, then largest id) — cohorts.cxr_ehr_features;
              an image whose admission is not known (rows that differ or were rejected at read, no dischtime) is a
              reject, never "in no admission"
    outcomes  the admission's hospital_expire_flag and the ICU stay's length lie in the image's future: written only
              with --include_outcomes, as outcome/* (TFRecords) and outcome_* (manifest), never as features; a blank
              flag is then a reject (unknown_outcome), never "alive"
    split     patient-level, --split_strategy (the official MIMIC-CXR split by default)
    outputs   tfrecords/ (image + features), manifest/, features/<set>-…csv for each --feature_sets name (the
              original's layout: path, then the vector), rejects/, metadata.json

    Read cxr_metadata, patients, admissions, icustays[, cxr_split] ─► SelectImages ─► CoGroupByKey(subject)
      (with the read rejects of patients, admissions, icustays: ROW_REJECTS)
      ─► DescribeImages ─► AssignSplits ─► AssertPatientDisjoint, AssertUniqueKeys(dicom_id)
        ─► WriteExamples (image read in the shard writer) ─► CountWritten ─► manifest, rejects, feature CSVs, metadata
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import accounting, mimic
from beam_pipeline.cohorts import Cohort
from beam_pipeline.cohorts import cxr_ehr_features as ehr
from beam_pipeline.cohorts import funnel as funnel_lib
from beam_pipeline.fileio.metadata import WriteMetadata, split_section, summarize_outputs
from beam_pipeline.fileio.outputs import (TEXT_SHARD_BYTES, WRITTEN, Manifest, Serialize, WriteExamples,
                                          WriteOutputs, csv_line, example_plan)
from beam_pipeline.fileio.sharded import ShardFormat, ShardPlan, WriteShards
from beam_pipeline.fileio.sources import make_source
from beam_pipeline.fileio.tfrecord import BYTES, FLOAT, INT64, serialize_example
from beam_pipeline.options import Config
from beam_pipeline.pipeline import checks_before_images, gather, image_stage, key_by_subject, read_tables, stage
from beam_pipeline.transforms.examples import EDGE_MAP_FEATURE, IMAGE_FEATURES, image_values
from beam_pipeline.transforms.images import SelectKeptImages
from beam_pipeline.transforms.join import RowRejects, Unique, duplicate_events, one_image_per_row, unique_rows
from beam_pipeline.transforms.pixels import ProcessedImage
from beam_pipeline.transforms.split import AssignSplits, CountPatientsAndStudies

UNIT_STAGES = ("metadata/", "join/", "split/", "images/")  # rejects of whole images (read/ rejects are of rows)


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    subject_id: int
    study_id: int
    dicom_id: str
    view_position: str
    study_time: dt.datetime
    image_path: str
    image_rows: int | None
    image_columns: int | None
    features: dict  # cxr_ehr_features.features
    encoded: tuple[float, ...]  # FEATURE_COLUMNS order
    outcomes: dict | None  # cxr_ehr_features.outcomes, only with --include_outcomes
    official_split: str | None = None
    split: str | None = None
    image: ProcessedImage | None = None

    def written_events(self) -> list[str]:
        f = self.features
        return [f"features/view/{f['view']}", f"features/orientation/{f['orientation']}",
                f"features/ageR10/{f['ageR10']}", f"features/gender/{f['gender']}",
                "features/in_admission" if f["in_admission"] is not None else "features/no_admission",
                "features/in_icu" if f["in_icu"] is not None else "features/no_icu"]


ROW_REJECTS = {rejects.table: rejects for rejects in (
    RowRejects("patient", mimic.PATIENTS.name, "gender and age come from the patients row"),
    RowRejects("admission", mimic.ADMISSIONS.name, "in no valid admission"),
    RowRejects("icustay", mimic.ICUSTAYS.name, "in no valid ICU stay"))}


def admission_problem(admission: dict | None, admissions: Unique, groups: dict) -> tuple[str, str] | None:
    """(reason, detail) when the image's admission (admission_of with open_end, among ``admissions.candidates()``)
    is not known: its rows differ; it has no dischtime (begun by the image, it may hold it, and it outranks every
    admission that surely does); or there is none while an admissions row of the subject was rejected at read.
    Never "in no admission", nor the next-best admission."""
    if admission is None:
        return ROW_REJECTS["admissions"].problem(groups)
    conflict = admissions.conflict(admission["hadm_id"])
    if conflict or admission["dischtime"] is not None:
        return conflict
    return "admission_end_unknown", (f"admissions hadm_id={admission['hadm_id']}: dischtime is blank and admittime "
                                     f"{mimic.format_datetime(admission['admittime'])} is not after the image: it "
                                     f"may be the image's admission")


class DescribeImages(beam.DoFn):
    """(subject_id, co-grouped rows) -> ImageRecord per kept-view image; images without a patients row or gender,
    or with no age bin, are counted (dropped/<reason>); repeated dicom_ids and conflicting rows are rejects, as is an
    image whose subject had a patients row rejected at read, whose admission is not known (admission_problem), that
    is in no valid ICU stay while an icustays row of its subject was rejected at read (it may be the one it falls
    in), or, with outcomes, whose admission's hospital_expire_flag is blank (unknown_outcome)."""

    def __init__(self, granularity: str, include_outcomes: bool):
        self._granularity = granularity
        self._include_outcomes = include_outcomes

    def process(self, element):
        subject_id, groups = element
        tables = {tag: unique_rows(groups.get(tag, ()), table.name, key) for tag, table, key in (
            ("patients", mimic.PATIENTS, "subject_id"), ("admissions", mimic.ADMISSIONS, "hadm_id"),
            ("icustays", mimic.ICUSTAYS, "stay_id"), ("splits", mimic.CXR_SPLIT, "dicom_id"))}
        yield from duplicate_events(tables.values())
        patients, admissions, icustays, splits = (tables[t] for t in ("patients", "admissions", "icustays", "splits"))
        images, duplicates = one_image_per_row(groups.get("images", ()))
        for image, (reason, detail) in duplicates:
            yield from accounting.reject("join", reason, subject_id=subject_id, study_id=image.study_id,
                                         dicom_id=image.dicom_id, detail=detail, counter="rejected")
        for image in images:
            admission = ehr.admission_of(image, admissions.candidates(), self._granularity, open_end=True)
            stay = ehr.icu_stay_of(image, icustays.candidates(), self._granularity)
            problem = (patients.conflict(subject_id) or splits.conflict(image.dicom_id)
                       or ROW_REJECTS["patients"].problem(groups) or admission_problem(admission, admissions, groups)
                       or (icustays.conflict(stay["stay_id"]) if stay else ROW_REJECTS["icustays"].problem(groups)))
            outcomes = None
            if self._include_outcomes and not problem:
                try:
                    outcomes = ehr.outcomes(admission, stay)
                except mimic.RowError as err:
                    problem = err.reason, err.detail
            if problem:
                yield from accounting.reject("join", problem[0], subject_id=subject_id, study_id=image.study_id,
                                             dicom_id=image.dicom_id, detail=problem[1], counter="rejected")
                continue
            try:
                features = ehr.features(image, patients.rows.get(subject_id), admission, stay)
            except mimic.RowError as err:
                yield accounting.event(f"dropped/{err.reason}")
                continue
            encoded = ehr.encode(features)
            split = splits.rows.get(image.dicom_id)
            yield ImageRecord(
                subject_id=subject_id, study_id=image.study_id, dicom_id=image.dicom_id,
                view_position=image.view_position, study_time=image.study_time, image_path=image.path,
                image_rows=image.rows, image_columns=image.columns, features=features,
                encoded=tuple(encoded[c] for c in ehr.FEATURE_COLUMNS), outcomes=outcomes,
                official_split=split and split["split"])


# --------------------------------------------------------------------------------------------------------------
# Outputs

FEATURES = {
    "subject_id": (INT64, (), "MIMIC subject_id"),
    "study_id": (INT64, (), "MIMIC-CXR study_id"),
    "dicom_id": (BYTES, (), "MIMIC-CXR dicom_id (the record key)"),
    "split": (BYTES, (), "train, val or test"),
    "study_datetime": (BYTES, (), "StudyDate + StudyTime, YYYY-MM-DD HH:MM:SS[.ffffff]"),
    "image/path": (BYTES, (), "source JPEG path relative to the MIMIC-CXR-JPG root"),
    "view_position": (BYTES, (), "DICOM ViewPosition as recorded (may be empty)"),
    "ehr/features": (FLOAT, (len(ehr.FEATURE_COLUMNS),), "encoded EHR variables in feature_columns order, all known "
                                                         "at the study time"),
    "ehr/gender": (BYTES, (), "M or F"),
    "ehr/age": (INT64, (), "age in the study's year"),
    "ehr/hadm_id": (INT64, (), "the admission the image falls in (--ehr_match), -1 when none"),
    "ehr/stay_id": (INT64, (), "the ICU stay the image falls in (--ehr_match), -1 when none"),
}
OUTCOME_FEATURES = {
    "outcome/hospital_expire_flag": (INT64, (), "OUTCOME (after the image): the admission ended in death; -1 when "
                                                "the image is in no admission"),
    "outcome/icu_los_days": (FLOAT, (), "OUTCOME (after the image): length of the ICU stay in days; NaN when none"),
}
ALL_FEATURES = {**FEATURES, **OUTCOME_FEATURES, **IMAGE_FEATURES, **EDGE_MAP_FEATURE}


def feature_spec(config: Config) -> dict:
    return {**FEATURES, **(OUTCOME_FEATURES if config.include_outcomes else {}),
            **(IMAGE_FEATURES if config.images else {}), **(EDGE_MAP_FEATURE if config.images and config.edge_map
                                                          else {})}


def _or(value, default):
    return default if value is None else value


def to_example(r: ImageRecord) -> bytes:
    f = r.features
    values = {
        "subject_id": [r.subject_id], "study_id": [r.study_id], "dicom_id": [r.dicom_id.encode()],
        "split": [r.split.encode()], "study_datetime": [mimic.format_datetime(r.study_time).encode()],
        "image/path": [r.image_path.encode()], "view_position": [r.view_position.encode()],
        "ehr/features": r.encoded, "ehr/gender": [f["gender"].encode()], "ehr/age": [f["age"]],
        "ehr/hadm_id": [_or(f["in_admission"], -1)], "ehr/stay_id": [_or(f["in_icu"], -1)], **image_values(r.image)}
    if r.outcomes is not None:
        values["outcome/hospital_expire_flag"] = [_or(r.outcomes["outcome_hospital_expire_flag"], -1)]
        values["outcome/icu_los_days"] = [_or(r.outcomes["outcome_icu_los_days"], float("nan"))]
    return serialize_example({name: (ALL_FEATURES[name][0], v) for name, v in values.items()})


RAW = ("gender", "age", "ageR5", "ageR10", "view", "orientation", "in_admission", "in_icu")


def manifest_for(include_outcomes: bool) -> Manifest:
    outcome_columns = ehr.OUTCOMES if include_outcomes else ()
    return Manifest(
        columns=("subject_id", "study_id", "dicom_id", "split", "study_datetime", "view_position", *RAW,
                 *outcome_columns),
        line=lambda r: csv_line([r.subject_id, r.study_id, r.dicom_id, r.split, mimic.format_datetime(r.study_time),
                                 r.view_position, *(_or(r.features[k], "") for k in RAW),
                                 *(_or(r.outcomes[k], "") for k in outcome_columns)]),
        key=lambda r: f"{r.subject_id:09d}/{r.study_id:09d}/{r.dicom_id}")


def feature_row(set_name: str, r: ImageRecord) -> tuple[str, str, bytes]:
    encoded = ehr.encode(r.features, r.outcomes)
    return set_name, f"{r.subject_id:09d}/{r.study_id:09d}/{r.dicom_id}", csv_line(
        ehr.feature_csv_line(r.image_path, encoded, set_name))


def write_feature_sets(records, config: Config) -> list:
    """features/<set>-SSSSS-of-NNNNN.csv per --feature_sets name, the original's layout (path, then the vector)."""
    files = []
    for name in config.feature_sets:
        files.append(records | f"ToFeatureRow {name}" >> beam.Map(lambda r, n=name: feature_row(n, r))
                     | f"WriteFeatureSet {name}" >> WriteShards(
                         FileSystems.join(config.output, "features"), [name],
                         ShardFormat(".csv", header=csv_line(ehr.feature_csv_header(name))),
                         ShardPlan(TEXT_SHARD_BYTES)))
    return files


def tables(config: Config) -> list[mimic.Table]:
    return [mimic.CXR_METADATA, mimic.PATIENTS, mimic.ADMISSIONS, mimic.ICUSTAYS] + (
        [mimic.CXR_SPLIT] if config.split_strategy == "official" else [])


def build(p: beam.Pipeline, config: Config, paths: dict[str, str], text: None, base: str,
          fail_when_empty: bool = False) -> None:
    source = make_source(config.billing_project)
    reads = read_tables(p, paths, source)
    images = reads["cxr_metadata"].rows | "SelectImages" >> SelectKeptImages(config.views)
    keyed = {"images": images["images"] | "KeyImages" >> beam.Map(lambda im: (im.subject_id, im))}
    for tag, table in (("patients", "patients"), ("admissions", "admissions"), ("icustays", "icustays"),
                       ("splits", "cxr_split")):
        if table in reads:
            keyed[tag] = key_by_subject(f"Key {tag}", reads[table].rows)
    for table, rejects in ROW_REJECTS.items():
        keyed[rejects.tag] = rejects.keyed(reads[table][accounting.REJECTS])
    described = stage(keyed | "CoGroupBySubject" >> beam.CoGroupByKey(), "DescribeImages",
                      DescribeImages(config.ehr_match, config.include_outcomes))
    split = described.records | "AssignSplits" >> AssignSplits.for_run(config, reads)
    checks = checks_before_images(split.records, key=lambda r: r.dicom_id)
    image_settings, loader = image_stage(config, source)
    examples = split.records | "WriteExamples" >> WriteExamples(
        config.output, example_plan(config.target_shard_mb, image_settings), config.compression, loader,
        Serialize(to_example), key=lambda r: r.dicom_id, after=checks)
    final = stage(examples[WRITTEN], "CountWritten", accounting.CountWritten())
    patients = final.records | "CountPatientsAndStudies" >> CountPatientsAndStudies()
    rejects, events, input_files = gather(reads, [images, described, split, examples, final], [patients])
    files = ([examples["files"], {"records": final.records, "rejects": rejects} | "WriteOutputs" >> WriteOutputs(
        config.output, manifest_for(config.include_outcomes)), *write_feature_sets(final.records, config)]
        | "Written" >> beam.Flatten())
    (events, input_files, files) | "WriteMetadata" >> WriteMetadata(
        config, base, functools.partial(document, config, feature_spec(config)), empty_message, fail_when_empty)


# --------------------------------------------------------------------------------------------------------------
# metadata.json and the funnel

def summarize_counts(events: dict[str, int]) -> dict:
    counts = funnel_lib.unit_counts(events, "images_kept_view", ehr.DROPS, UNIT_STAGES)
    counts["feature_coverage"] = {k: v for k, v in events.items() if k.startswith("features/")}
    return counts


def funnel_steps(c: dict) -> list[tuple[str, int]]:
    return funnel_lib.steps(c, "images_kept_view", "images of a kept view",
                            (("with a patients row, gender and age", ehr.DROPS),))


def document(config: Config, features: dict, events: dict[str, int], input_files: list[dict],
             files: list[dict]) -> dict:
    counts = summarize_counts(events)
    outputs = summarize_outputs(files, config.output)
    set_rows = {name: outputs.get("features", {}).get(name, {}).get("records", 0) for name in config.feature_sets}
    problems = funnel_lib.identity_problems(counts, outputs, "images_kept_view", (
        ("feature set rows == matched", set_rows, {name: counts["matched"] for name in config.feature_sets}),))
    return funnel_lib.document(
        COHORTS["cxr_ehr"].description, config, input_files, features, counts, funnel_steps(counts),
        split_section(config, events, counts), outputs, problems,
        feature_columns=list(ehr.FEATURE_COLUMNS),
        feature_sets={name: ehr.feature_csv_header(name)[1:] for name in config.feature_sets},
        ehr_match={"admission": dataclasses.replace(ehr.ADMISSION_INTERVAL, granularity=config.ehr_match).as_dict(),
                   "icu_stay": dataclasses.replace(ehr.ICU_INTERVAL, granularity=config.ehr_match).as_dict()},
        outcomes=list(ehr.OUTCOMES) if config.include_outcomes else None)


def empty_message(document: dict) -> str:
    return funnel_lib.empty_message(document, funnel_steps(document["counts"]), "images")


def funnel(counts: dict, config: dict) -> str:
    return funnel_lib.table(funnel_steps(counts), counts)


def check(config: Config) -> list[str]:
    try:
        ehr.check_feature_sets(config.feature_sets, config.include_outcomes)
    except ValueError as err:
        return [f"--feature_sets: {err}"]
    return []


COHORTS = {"cxr_ehr": Cohort(
    name="cxr_ehr",
    description="CXR-EHR-MSN: every CXR image with the EHR variables known at its time",
    roots=("mimic_iv_root",),
    defaults={"views": (mimic.ALL_VIEWS,), "image_size": 224, "resize_mode": "crop"},
    tables=tables,
    build=build,
    funnel=funnel,
    empty_message=empty_message,
    check=check,
)}
