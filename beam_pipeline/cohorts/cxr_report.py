"""cxr_report: one PA image per study with the findings and impression of its report (report generation).

Definition (cohort-definitions.md §D and §E; differences from the original: README, Cohorts):

    record    per study with a --views image (PA by default): its smallest dicom_id, chosen among every version of
              the subject's metadata rows (join.unique_images: exact copies are one row, counted). Never another
              image instead: the study is rejected when that dicom_id's rows differ (join/conflicting_cxr_metadata),
              when it is under two studies of the subject (join/dicom_id_of_several_studies), or when a kept-view row
              of the study (or of an unreadable study_id) with a dicom_id not above it was rejected at read
              (join/cxr_row_rejected: it may be the smallest)
    report    files/pXX/pXXXXXXXX/sNNNNNNNN.txt from --mimic_cxr_reports (a tree, or the release's zip, under any
              folder; local or gs://), sectioned by the MIT-LCP parser's rules (cohorts.report_sections); cleaned
              (NOTIFICATION tail, de-identification underscores, whitespace); target = findings + " " + impression,
              kept when --min_words <= words <= --max_words (20-65, as the original). MIMIC-CXR has a report for
              every study, so a missing file is bad input: rejected (report/missing_report), like an empty or blank
              one (report/empty_report) and an unreadable one (report/unreadable_report), the path in the detail. A
              zip's members at one path (under two folders, or one name twice) are the report when their bytes are
              the same (extra copies counted, duplicates/identical_rows/report), and reject the study when they
              differ (report/conflicting_report, the member names in the detail): never one of them by archive order
    first     --one_per_subject (the classification variant): per subject, the earliest study (time, study_id) that
              no report rule dropped. A later study never stands in for it: when a study rejected before this choice
              may precede it (join or report rejects; a study whose every kept-view row was rejected at read has an
              unknown time) or it is rejected after (split, image), the subject has no record; its passing studies
              count as not_first_of_subject and the first study's reject line says why
    labels    the study's 14 CheXpert values (raw, binary under --uncertain_policy, mask)
    split     patient-level, --split_strategy (the official split by default)
    outputs   tfrecords/ (image 224 px letterbox + target + sections + labels), manifest/, instructions/<split>…jsonl
              (one user turn: --instruction + the image; one assistant turn: the target), rejects/, metadata.json

The report text is read only by this cohort: it never enters an ed_cxr note. A reject line never holds report text.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import lzma
import math
import re
import zipfile
import zlib
from collections import defaultdict
from typing import Iterable

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import accounting, mimic
from beam_pipeline.cohorts import Cohort
from beam_pipeline.cohorts import funnel as funnel_lib
from beam_pipeline.cohorts import report_sections as rs
from beam_pipeline.fileio.csv_tables import InputError
from beam_pipeline.fileio.metadata import WriteMetadata, split_section, summarize_outputs
from beam_pipeline.fileio.outputs import (WRITTEN, Manifest, Serialize, WriteExamples, WriteOutputs, csv_line,
                                          example_plan)
from beam_pipeline.fileio.sharded import ShardFormat, ShardPlan, WriteShards
from beam_pipeline.fileio.sources import RequesterPaysError, RequesterPaysSource, make_source
from beam_pipeline.fileio.tfrecord import BYTES, FLOAT, INT64, serialize_example
from beam_pipeline.options import Config
from beam_pipeline.pipeline import checks_before_images, gather, image_stage, key_by_subject, read_tables, stage
from beam_pipeline.transforms import labels as labels_lib
from beam_pipeline.transforms.examples import EDGE_MAP_FEATURE, IMAGE_FEATURES, image_values
from beam_pipeline.transforms.images import SelectKeptImages, metadata_row_rejects
from beam_pipeline.transforms.join import (KeyLabelRejects, RowRejects, Unique, duplicate_events, group_by,
                                          label_problem, rejected_labels, unique_images, unique_rows)
from beam_pipeline.transforms.pixels import ProcessedImage
from beam_pipeline.transforms.split import AssignSplits, CountPatientsAndStudies

DROPS = ("no_findings_or_impression", "target_too_short", "target_too_long", "not_first_of_subject")
UNIT_STAGES = ("join/", "report/", "split/", "images/")  # rejects of whole studies
WORD_BUCKETS = (0, 10, 20, 30, 40, 50, 65, 80, 100, 150)  # the data card's histogram of target lengths
# What else than BadZipFile (a bad CRC or local header) and OSError reading one damaged member of the zip raises:
# damaged deflate data (zlib.error), data running past the archive's end (EOFError), damaged LZMA data (LZMAError),
# a damaged directory entry naming an unsupported method or flag (NotImplementedError) or encryption (RuntimeError).
DAMAGED_MEMBER = (zlib.error, EOFError, lzma.LZMAError, NotImplementedError, RuntimeError)
# A report's path in the tree, at the end of a zip member's name under any folders (the release's
# mimic-cxr-reports/, a mirror's physionet.org/files/mimic-cxr/2.1.0/): the first "files/" is not always the tree's.
REPORT_MEMBER = re.compile(r"(?:^|/)(files/p\d\d/p\d+/s\d+\.txt)$")
# Metadata rows rejected when read (read/: any view, no dicom_id) or typed (metadata/: a kept view): a reject line
# holds ids, not the row, so one of the study whose dicom_id is unknown or not above the chosen one may be the
# study's smallest.
CXR_REJECTS = RowRejects("cxr", mimic.CXR_METADATA.name,
                         "the study's smallest kept-view dicom_id may be a rejected row")
# Tag of the studies rejected before --one_per_subject's choice: (subject_id, (study time or None, study_id)).
UNUSABLE = "unusable"


@dataclasses.dataclass(frozen=True)
class StudyRecord:
    subject_id: int
    study_id: int
    dicom_id: str
    view_position: str
    study_time: dt.datetime
    image_path: str
    image_rows: int | None
    image_columns: int | None
    labels_raw: tuple[float, ...]
    labels_binary: tuple[int, ...]
    labels_mask: tuple[int, ...]
    labels_status: str
    official_split: str | None = None
    findings: str = ""
    impression: str = ""
    target: str = ""
    sections: tuple[str, ...] = ()  # normalised section names in order
    split: str | None = None
    image: ProcessedImage | None = None

    @property
    def words(self) -> int:
        return rs.word_count(self.target)

    def written_events(self) -> list:
        bucket = max(b for b in WORD_BUCKETS if b <= self.words)
        return [f"target_words/{bucket:03d}", f"labels/{self.labels_status}",
                *(f"sections/{name}" if name in rs.KNOWN_SECTIONS else (f"sections/{name}", 1, "sections/other_header")
                  for name in sorted(set(self.sections)))]


def reject_study(stage: str, problem: tuple[str, str], subject_id: int, study_id: int | None, dicom_id: str | None,
                 study_time: dt.datetime | None):
    """A rejected study: its reject line and count, and its UNUSABLE mark (it may be its subject's first study)."""
    yield from accounting.reject(stage, problem[0], subject_id=subject_id, study_id=study_id, dicom_id=dicom_id,
                                 detail=problem[1], counter="rejected")
    yield beam.pvalue.TaggedOutput(UNUSABLE, (subject_id, (study_time, study_id)))


def smallest_dicom_ids(images: Unique) -> dict[int, str]:
    """study_id -> its smallest dicom_id among every version of the subject's metadata rows (conflicts included:
    the choice is made before a conflict rejects it, so it never falls to the next-best image)."""
    smallest: dict[int, str] = {}
    for row in images.candidates():
        study_id, dicom_id = row["study_id"], row["dicom_id"]
        smallest[study_id] = min(smallest.get(study_id, dicom_id), dicom_id)
    return smallest


def image_problem(study_id: int, dicom_id: str, images: Unique, read_rejects: Iterable[dict]
                  ) -> tuple[str, str] | None:
    """(reason, detail) when the study's smallest dicom_id cannot be trusted: it is under several of the subject's
    studies, its rows differ, or a kept-view row of the study (or of an unreadable study_id) whose dicom_id is not
    above it was rejected at read."""
    studies = sorted({row["study_id"] for row in images.conflicts.get(dicom_id, ())})
    if len(studies) > 1:
        return ("dicom_id_of_several_studies",
                f"{images.table} dicom_id={dicom_id} under study_ids {','.join(map(str, studies))} of this subject")
    smaller = [r for r in read_rejects
               if r["study_id"] in (study_id, None) and (r["dicom_id"] or "").strip() <= dicom_id]
    return images.conflict(dicom_id) or CXR_REJECTS.problem_of(smaller)


class ChooseStudyImages(beam.DoFn):
    """(subject_id, co-grouped rows) -> one StudyRecord per study with a kept-view image: its smallest dicom_id
    (the original chose at random). A study whose image (image_problem), label or split rows conflict or were
    rejected at read is rejected; a study whose every kept-view row was rejected at read is marked UNUSABLE with an
    unknown time."""

    def __init__(self, uncertain_policy: str):
        self._policy = uncertain_policy

    def process(self, element):
        subject_id, groups = element
        images = unique_images(groups.get("images", ()))
        labels = unique_rows(groups.get("labels", ()), mimic.CXR_CHEXPERT.name, "study_id")
        splits = unique_rows(groups.get("splits", ()), mimic.CXR_SPLIT.name, "dicom_id")
        yield from duplicate_events((images, labels, splits))
        rejected = rejected_labels(groups)
        read_rejects = group_by(groups.get(CXR_REJECTS.tag, ()), "study_id")
        smallest = smallest_dicom_ids(images)
        for study_id, dicom_id in sorted(smallest.items()):
            yield accounting.event("studies")
            versions = images.conflicts.get(dicom_id) or (images.rows[dicom_id],)
            study_time = min(row["study_time"] for row in versions if row["study_id"] == study_id)
            problem = (image_problem(study_id, dicom_id, images,
                                     [*read_rejects.get(study_id, ()), *read_rejects.get(None, ())])
                       or label_problem(study_id, labels, rejected) or splits.conflict(dicom_id))
            if problem:
                yield from reject_study("join", problem, subject_id, study_id, dicom_id, study_time)
                continue
            image = mimic.Image(**images.rows[dicom_id])
            raw, binary, mask, status = labels_lib.label_vectors(labels.rows.get(study_id), self._policy)
            split = splits.rows.get(dicom_id)
            yield StudyRecord(
                subject_id=subject_id, study_id=study_id, dicom_id=dicom_id, view_position=image.view_position,
                study_time=image.study_time, image_path=image.path, image_rows=image.rows,
                image_columns=image.columns, labels_raw=tuple(raw), labels_binary=tuple(binary),
                labels_mask=tuple(mask), labels_status=status, official_split=split and split["split"])
        for study_id in read_rejects.keys() - smallest.keys():  # a study (or rows of any) of unknown time
            yield beam.pvalue.TaggedOutput(UNUSABLE, (subject_id, (None, study_id)))


def report_problem(relative: str, text: str | None) -> tuple[str, str] | None:
    """(reason, detail) of a report file that is missing or holds nothing but whitespace: MIMIC-CXR has a report
    for every study, so either is bad input, not a study without findings. The detail is the path, never text."""
    if text is None:
        return "missing_report", f"{relative}: no such file"
    if not text.strip():
        return "empty_report", f"{relative}: empty"
    return None


class ConflictingReport(Exception):
    """Members of the zip at one report path whose bytes differ (their names, never their text): which one is the
    study's report is not known."""


class ReadReports(beam.DoFn):
    """StudyRecord -> the same with its sections and target, or counted by why it has none (DROPS), or rejected
    (missing, empty, unreadable, or conflicting copies in the zip). The reports are a tree of .txt files or the
    release's zip (opened once per worker; members found by their path in the tree, REPORT_MEMBER).

    Several members at one path are judged per study, not at launch: telling identical copies (one report, as
    exact copies of a metadata row are one row) from different ones means reading them, too slow for the launch
    check on a whole zip, and one doubtful report should cost its study, not the job."""

    def __init__(self, reports: str, source, min_words: int, max_words: int):
        self._reports = reports
        self._source = source
        self._min, self._max = min_words, max_words

    def setup(self):
        self._zip = self._members = None
        if is_zip(self._reports):
            self._zip = zipfile.ZipFile(self._source.open(self._reports))
            self._members = report_members(self._zip.infolist())

    def _read(self, relative: str) -> tuple[bytes | None, int]:
        """(the report's bytes, None when there is none; how many extra identical copies the zip holds). Every
        member of the zip at the path is read: copies that are the same bytes are the report; copies that differ
        raise ConflictingReport."""
        if self._zip is None:  # one request per report: a missing one is FileNotFoundError, not an existence check
            try:
                return self._source.read(FileSystems.join(self._reports, relative)), 0
            except FileNotFoundError:
                return None, 0
        members = self._members.get(relative, [])
        try:
            copies = [self._zip.read(member) for member in members]
        except RequesterPaysError:  # the bucket, not the member: stop the job naming the flag
            raise
        except DAMAGED_MEMBER as err:  # only this report is lost: rejected below like any unreadable one
            raise zipfile.BadZipFile(repr(err)) from err
        if any(copy != copies[0] for copy in copies[1:]):
            raise ConflictingReport(", ".join(member.filename for member in members))
        return (copies[0], len(copies) - 1) if copies else (None, 0)

    def process(self, record: StudyRecord):
        relative = mimic.report_path(record.subject_id, record.study_id)
        try:
            data, copies = self._read(relative)
            if copies:
                yield accounting.event("duplicates/identical_rows/report", copies)
            text = None if data is None else rs.decode(data)
            problem = report_problem(relative, text)
        except (OSError, UnicodeDecodeError, zipfile.BadZipFile) as err:
            problem = ("unreadable_report", f"{relative}: {type(err).__name__}: {err}")
        except ConflictingReport as err:
            problem = ("conflicting_report", f"{relative}: zip members differ: {err}")
        if problem:
            yield from reject_study("report", problem, record.subject_id, record.study_id, record.dicom_id,
                                    record.study_time)
            return
        sections = rs.section_text(text)
        findings, impression, target = rs.target_of(sections)
        words = rs.word_count(target)
        reason = ("no_findings_or_impression" if not target else "target_too_short" if words < self._min else
                  "target_too_long" if words > self._max else None)
        if reason:
            yield accounting.event(f"dropped/{reason}")
            return
        yield dataclasses.replace(record, findings=findings, impression=impression, target=target,
                                  sections=tuple(rs.names(sections)))


def is_zip(reports: str) -> bool:
    """--mimic_cxr_reports names the release's zip (any case: a copy may be named .ZIP), not a folder."""
    return reports.lower().endswith(".zip")


def report_members(members: Iterable[zipfile.ZipInfo]) -> dict[str, list[zipfile.ZipInfo]]:
    """files/pXX/pXXXXXXXX/sNNNNNNNN.txt -> its members in the zip (which may nest the tree in folders, REPORT_MEMBER),
    in archive order: every one, since two folders, or one name written twice, may hold a path (reading by name
    would give the last)."""
    found: dict[str, list[zipfile.ZipInfo]] = defaultdict(list)
    for member in members:
        if match := REPORT_MEMBER.search(member.filename):
            found[match.group(1)].append(member)
    return dict(found)


def check_reports(reports: str, source) -> None:
    """Raise InputError naming --mimic_cxr_reports when it is missing or holds no report, before the job runs: a
    wrong folder would reject every study as missing_report, a wrong zip fail every worker after the join. A gs://
    folder read with --billing_project is not listed (Beam's listing cannot bill a requester-pays bucket)."""
    if reports.startswith("gs://") and not is_zip(reports) and isinstance(source, RequesterPaysSource):
        return
    where = f"--mimic_cxr_reports={reports}"
    try:
        if is_zip(reports):
            if not source.exists(reports):
                raise InputError(f"{where}: no such file")
            with source.open(reports) as raw, zipfile.ZipFile(raw) as archive:
                found = report_members(archive.infolist())
        else:  # listed lazily: the first report ends the search
            found = FileSystems.match([FileSystems.join(reports, "files", "p*", "p*", "s*.txt")],
                                      limits=[1])[0].metadata_list
    except (OSError, zipfile.BadZipFile, NotImplementedError) as err:
        raise InputError(f"{where}: cannot be read ({err})") from None
    if not found:
        raise InputError(f"{where}: no report found there (files/pXX/pXXXXXXXX/sNNNNNNNN.txt)")


def first_study(records: Iterable[StudyRecord], unusable: Iterable[tuple]) -> tuple[StudyRecord | None, int]:
    """(the subject's first study among its passing ``records``, how many passing studies are not it). None when a
    study rejected before the choice may precede it (``unusable``: (time, study_id), time None when unknown): the
    first study is then not known, and a later one never stands in for it."""
    order = sorted(records, key=lambda r: (r.study_time, r.study_id))
    first = order[0] if order else None
    if first is None or any(time is None or (time, study_id) < (first.study_time, first.study_id)
                            for time, study_id in unusable):
        return None, len(order)
    return first, len(order) - 1


class FirstOfSubject(beam.DoFn):
    """(subject_id, {records: studies that passed, unusable: studies rejected before}) -> its first study
    (first_study); the other passing studies counted as not_first_of_subject."""

    def process(self, element):
        _, groups = element
        first, others = first_study(groups["records"], groups["unusable"])
        if others:
            yield accounting.event("dropped/not_first_of_subject", others)
        if first is not None:
            yield first


class OnePerSubject(beam.PTransform):
    """--one_per_subject: passing studies -> each subject's first (FirstOfSubject), told of the studies rejected
    before by the UNUSABLE outputs of ``stages``."""

    def __init__(self, stages: list):
        super().__init__()
        self._stages = stages

    def expand(self, records):
        unusable = [s[UNUSABLE] for s in self._stages] | "AllUnusable" >> beam.Flatten()
        keyed = records | "KeyBySubject" >> beam.Map(lambda r: (r.subject_id, r))
        return ({"records": keyed, "unusable": unusable} | "CoGroupBySubject" >> beam.CoGroupByKey()
                | "FirstOfSubject" >> beam.ParDo(FirstOfSubject()).with_outputs(
                    accounting.REJECTS, accounting.EVENTS, main="records"))


def study_stage(pcoll, label: str, dofn: beam.DoFn):
    """pipeline.stage with the UNUSABLE output too (the studies it rejects, for --one_per_subject)."""
    return pcoll | label >> beam.ParDo(dofn).with_outputs(accounting.REJECTS, accounting.EVENTS, UNUSABLE,
                                                          main="records")


# --------------------------------------------------------------------------------------------------------------
# Outputs

N_LABELS = len(mimic.LABELS)
FEATURES = {
    "subject_id": (INT64, (), "MIMIC subject_id"),
    "study_id": (INT64, (), "MIMIC-CXR study_id"),
    "dicom_id": (BYTES, (), "the study's image: its smallest dicom_id of a kept view (the record key)"),
    "split": (BYTES, (), "train, val or test"),
    "view_position": (BYTES, (), "DICOM ViewPosition"),
    "study_datetime": (BYTES, (), "StudyDate + StudyTime, YYYY-MM-DD HH:MM:SS[.ffffff]"),
    "image/path": (BYTES, (), "source JPEG path relative to the MIMIC-CXR-JPG root"),
    "report/target": (BYTES, (), "cleaned findings + ' ' + cleaned impression (UTF-8)"),
    "report/findings": (BYTES, (), "the last FINDINGS section, cleaned"),
    "report/impression": (BYTES, (), "the last IMPRESSION section (or a synonym), cleaned"),
    "report/sections": (BYTES, (None,), "normalised section names in report order"),
    "report/words": (INT64, (), "words in report/target"),
    "labels/chexpert": (FLOAT, (N_LABELS,), "raw CheXpert values in label_order: 1, 0, -1 or NaN (blank)"),
    "labels/binary": (INT64, (N_LABELS,), "targets under --uncertain_policy; -1 where labels/mask is 0"),
    "labels/mask": (INT64, (N_LABELS,), "1 where the binary target is valid"),
}
ALL_FEATURES = {**FEATURES, **IMAGE_FEATURES, **EDGE_MAP_FEATURE}


def feature_spec(config: Config) -> dict:
    return {**FEATURES, **(IMAGE_FEATURES if config.images else {}),
            **(EDGE_MAP_FEATURE if config.images and config.edge_map else {})}


def to_example(r: StudyRecord) -> bytes:
    values = {
        "subject_id": [r.subject_id], "study_id": [r.study_id], "dicom_id": [r.dicom_id.encode()],
        "split": [r.split.encode()], "view_position": [r.view_position.encode()],
        "study_datetime": [mimic.format_datetime(r.study_time).encode()], "image/path": [r.image_path.encode()],
        "report/target": [r.target.encode()], "report/findings": [r.findings.encode()],
        "report/impression": [r.impression.encode()], "report/sections": [s.encode() for s in r.sections],
        "report/words": [r.words], "labels/chexpert": r.labels_raw, "labels/binary": r.labels_binary,
        "labels/mask": r.labels_mask, **image_values(r.image)}
    return serialize_example({name: (ALL_FEATURES[name][0], v) for name, v in values.items()})


def _key(r: StudyRecord) -> str:
    return f"{r.subject_id:09d}/{r.study_id:09d}/{r.dicom_id}"


MANIFEST = Manifest(
    columns=("subject_id", "study_id", "dicom_id", "split", "study_datetime", "view_position", "target_words",
             "sections", "labels_status"),
    line=lambda r: csv_line([r.subject_id, r.study_id, r.dicom_id, r.split, mimic.format_datetime(r.study_time),
                             r.view_position, r.words, ";".join(r.sections), r.labels_status]),
    key=_key)


def instruction_line(instruction: str, r: StudyRecord) -> bytes:
    """One chat example in the common messages layout: the user turn holds the instruction and the image (a path
    relative to the MIMIC-CXR-JPG root; the TFRecords hold the pixels), the assistant turn the target."""
    example = {"id": r.dicom_id, "study_id": r.study_id, "split": r.split, "messages": [
        {"role": "user", "content": [{"type": "text", "text": instruction},
                                     {"type": "image", "image": r.image_path}]},
        {"role": "assistant", "content": [{"type": "text", "text": r.target}]}]}
    return (json.dumps(example, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")


def build(p: beam.Pipeline, config: Config, paths: dict[str, str], text: None, base: str,
          fail_when_empty: bool = False) -> None:
    source = make_source(config.billing_project)
    reads = read_tables(p, paths, source)
    images = reads["cxr_metadata"].rows | "SelectImages" >> SelectKeptImages(config.views)
    keyed = {"images": images["images"] | "KeyImages" >> beam.Map(lambda im: (im.subject_id, im)),
             "labels": key_by_subject("Key labels", reads["cxr_chexpert"].rows),
             "rejected_labels": reads["cxr_chexpert"][accounting.REJECTS]
             | "Key rejected_labels" >> KeyLabelRejects(images["images"]),
             CXR_REJECTS.tag: CXR_REJECTS.keyed(metadata_row_rejects(reads["cxr_metadata"], images))}
    if "cxr_split" in reads:
        keyed["splits"] = key_by_subject("Key splits", reads["cxr_split"].rows)
    chosen = study_stage(keyed | "CoGroupBySubject" >> beam.CoGroupByKey(), "ChooseStudyImages",
                         ChooseStudyImages(config.uncertain_policy))
    read = study_stage(chosen.records, "ReadReports", ReadReports(config.mimic_cxr_reports, source, config.min_words,
                                                                  config.max_words))
    selected = [chosen, read]
    if config.one_per_subject:
        selected.append(read.records | "OnePerSubject" >> OnePerSubject([chosen, read]))
    split = selected[-1].records | "AssignSplits" >> AssignSplits.for_run(config, reads)
    checks = checks_before_images(split.records, key=lambda r: r.dicom_id)
    image_settings, loader = image_stage(config, source)
    examples = split.records | "WriteExamples" >> WriteExamples(
        config.output, example_plan(config.target_shard_mb, image_settings), config.compression, loader,
        Serialize(to_example), key=lambda r: r.dicom_id, after=checks)
    final = stage(examples[WRITTEN], "CountWritten", accounting.CountWritten())
    patients = final.records | "CountPatientsAndStudies" >> CountPatientsAndStudies()
    instructions = (final.records | "ToInstruction" >> beam.Map(
        lambda r: (r.split, _key(r), instruction_line(config.instruction, r)))
        | "WriteInstructions" >> WriteShards(FileSystems.join(config.output, "instructions"), mimic.SPLITS,
                                             ShardFormat(".jsonl"), ShardPlan(math.inf)))
    rejects, events, input_files = gather(reads, [images, *selected, split, examples, final], [patients])
    files = ((examples["files"], instructions,
              {"records": final.records, "rejects": rejects} | "WriteOutputs" >> WriteOutputs(config.output, MANIFEST))
             | "Written" >> beam.Flatten())
    (events, input_files, files) | "WriteMetadata" >> WriteMetadata(
        config, base, functools.partial(document, config, feature_spec(config)), empty_message, fail_when_empty)


# --------------------------------------------------------------------------------------------------------------
# metadata.json and the funnel

def summarize_counts(events: dict[str, int]) -> dict:
    counts = funnel_lib.unit_counts(events, "studies", DROPS, UNIT_STAGES)
    counts["target_words"] = {k.split("/")[1]: v for k, v in sorted(events.items()) if k.startswith("target_words/")}
    counts["section_coverage"] = {k.split("/", 1)[1]: v for k, v in events.items() if k.startswith("sections/")}
    counts["labels"] = {k.split("/", 1)[1]: v for k, v in events.items() if k.startswith("labels/")}
    return counts


def funnel_steps(c: dict) -> list[tuple[str, int]]:
    return funnel_lib.steps(c, "studies", "studies with a kept-view image", (
        ("with findings or impression", ("no_findings_or_impression",)),
        ("target within the word limits", ("target_too_short", "target_too_long")),
        ("first of its subject (--one_per_subject)", ("not_first_of_subject",))))


def document(config: Config, features: dict, events: dict[str, int], input_files: list[dict],
             files: list[dict]) -> dict:
    counts = summarize_counts(events)
    outputs = summarize_outputs(files, config.output)
    listed = {s: outputs.get("instructions", {}).get(s, {}).get("records", 0) for s in mimic.SPLITS}
    problems = funnel_lib.identity_problems(counts, outputs, "studies", (
        ("instruction lines == per_split", listed, counts["per_split"]),
        ("target word buckets == matched", sum(counts["target_words"].values()), counts["matched"])))
    return funnel_lib.document(
        COHORTS["cxr_report"].description, config, input_files, features, counts, funnel_steps(counts),
        split_section(config, events, counts), outputs, problems, label_order=list(mimic.LABELS),
        report={"parser": "MIT-LCP mimic-cxr section_parser rules (cohorts/report_sections.py; the 54 per-study "
                          "manual overrides are not reproduced)",
                "cleaning": "from NOTIFICATION: on removed, underscores removed, whitespace collapsed",
                "target": "findings + ' ' + impression", "words": [config.min_words, config.max_words],
                "instruction": config.instruction})


def empty_message(document: dict) -> str:
    return funnel_lib.empty_message(document, funnel_steps(document["counts"]), "studies")


def funnel(counts: dict, config: dict) -> str:
    return funnel_lib.table(funnel_steps(counts), counts, width=44)


def check(config: Config) -> list[str]:
    return ([] if config.min_words <= config.max_words else
            [f"--min_words ({config.min_words}) must be <= --max_words ({config.max_words})"])


COHORTS = {"cxr_report": Cohort(
    name="cxr_report",
    description="MIMIC-CXR report generation: one image per study with its findings and impression",
    roots=("mimic_cxr_reports",),
    defaults={"views": ("PA",), "image_size": 224, "resize_mode": "pad"},
    tables=lambda config: [mimic.CXR_METADATA, mimic.CXR_CHEXPERT] + (
        [mimic.CXR_SPLIT] if config.split_strategy == "official" else []),
    build=build,
    funnel=funnel,
    empty_message=empty_message,
    check=check,
    check_inputs=lambda config, source: check_reports(config.mimic_cxr_reports, source),
)}
