"""Patient-level splits, and a check in the pipeline that no patient is in two splits.

``official`` (the default): the MIMIC-CXR split file, per image (``validate`` -> ``val``), so results compare with
published models; an image missing from the file is rejected (``not_in_official_split``, counted). A patient whose
rows in the file sit in more than one official split has all of its images moved to the most held-out of those
splits (test, then val), so no patient straddles splits and no official test image ever becomes training data. The
patient's split is taken over every row of the file for the subject, not only the images this run kept, so it is a
function of the file alone: the same in every run and cohort, whatever --views, the window or the joins dropped.
Rows rejected when read are not in the file (their image is ``not_in_official_split``); every version of a
dicom_id whose rows conflict counts (its image is rejected in the join, and may be a test image); values other than
train/validate/test count for nothing (their image is ``unknown_official_split``). Counted: records moved off their
own official split (``split_reassigned_records``), patients with such records (``split_reassigned_patients``), and
subjects of the file in several splits (``split_file_patients_in_several_splits``, whatever this run kept).
``hash``: a pure function of (salt, subject_id) via sha256, the same on every worker and rerun. Records are grouped
by subject_id first, so a patient's images are assigned together; the job still verifies before writing anything
that no subject_id is in two splits.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import apache_beam as beam

from beam_pipeline import accounting, mimic
from beam_pipeline.transforms.records import Record

STAGE = "split"


def unit_interval(text: str) -> float:
    """A uniform number in [0, 1) from the first 8 bytes of sha256(text)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64


def hash_split(subject_id: int, salt: str, fractions: Sequence[float]) -> str:
    u = unit_interval(f"{salt}:{subject_id}")
    cumulative = 0.0
    for name, fraction in zip(mimic.SPLITS, fractions):
        cumulative += fraction
        if u < cumulative:
            return name
    return mimic.SPLITS[-1]  # u within rounding of 1.0


HELD_OUT_ORDER = ("train", "val", "test")  # a patient in several official splits goes to the last one present


def most_held_out(splits) -> str:
    return max(splits, key=HELD_OUT_ORDER.index)


class _AssignSubject(beam.DoFn):
    """(subject_id, {records, file: the subject's split-file values}) -> the records with their split; images
    missing from the official file are rejected."""

    def __init__(self, strategy: str, salt: str, fractions: Sequence[float]):
        self._strategy = strategy
        self._salt = salt
        self._fractions = tuple(fractions)

    def process(self, element):
        subject_id, groups = element
        records = groups["records"]
        if self._strategy == "hash":
            split = hash_split(subject_id, self._salt, self._fractions)
            for record in records:
                yield dataclasses.replace(record, split=split)
            return
        in_file = {mimic.OFFICIAL_SPLITS[value] for value in groups["file"] if value in mimic.OFFICIAL_SPLITS}
        if len(in_file) > 1:
            yield accounting.event("split_file_patients_in_several_splits")
        kept = []
        for record in records:
            split = mimic.OFFICIAL_SPLITS.get(record.official_split or "")
            if split is None:
                reason = "not_in_official_split" if record.official_split is None else "unknown_official_split"
                yield from accounting.reject(STAGE, reason, subject_id=record.subject_id,
                                             study_id=record.study_id, dicom_id=record.dicom_id,
                                             detail=f"cxr_split: split={record.official_split!r}",
                                             counter="rejected")
            else:
                kept.append((record, split))
        if not kept:
            return
        target = most_held_out(in_file | {split for _, split in kept})
        moved = sum(split != target for _, split in kept)
        if moved:
            yield accounting.event("split_reassigned_patients")
            yield accounting.event("split_reassigned_records", moved)
        for record, _ in kept:
            yield dataclasses.replace(record, split=target)


def split_file_rows(reads: dict):
    """The official split file's rows among a cohort's reads, for AssignSplits; None when it is not read (hash)."""
    read = reads.get(mimic.CXR_SPLIT.name)
    return None if read is None else read.rows


class AssignSplits(beam.PTransform):
    """Records -> records with their split (patient by patient), plus the rejects and events every stage has.
    ``split_rows``: the split file's rows (needed by ``official``), co-grouped with the records by subject as the
    distinct (subject_id, split value) pairs, a few per subject: the patient's split comes from the whole file."""

    def __init__(self, strategy: str, salt: str, fractions: Sequence[float], split_rows=None):
        super().__init__()
        if strategy == "official" and split_rows is None:
            raise ValueError("the official split needs the split file's rows (split_rows)")
        self._official = strategy == "official"
        self._split_rows = split_rows
        self._dofn = _AssignSubject(strategy, salt, fractions)

    @classmethod
    def for_run(cls, config, reads: dict) -> "AssignSplits":
        """The run's --split_strategy, salt and fractions, with the split file's rows when the cohort read it."""
        return cls(config.split_strategy, config.split_salt, config.split_fractions, split_file_rows(reads))

    def expand(self, records):
        groups = {"records": records | "KeyBySubject" >> beam.Map(lambda r: (r.subject_id, r))}
        if self._official:
            groups["file"] = (self._split_rows
                              | "SubjectSplitValue" >> beam.Map(lambda row: (row["subject_id"], row["split"]))
                              | "DistinctSubjectSplitValue" >> beam.Distinct())
        return (groups
                | "GroupBySubject" >> beam.CoGroupByKey()
                | "AssignPerSubject" >> beam.ParDo(self._dofn).with_outputs(
                    accounting.REJECTS, accounting.EVENTS, main="records"))


class PatientOverlapError(RuntimeError):
    pass


def _check_one_split(subject_and_splits):
    subject_id, splits = subject_and_splits
    splits = sorted(set(splits))
    if len(splits) > 1:
        raise PatientOverlapError(f"subject {subject_id} appears in splits {splits}: splits must be patient-disjoint")
    return []


class AssertPatientDisjoint(beam.PTransform):
    """Records -> nothing; fails the job if a patient has records in two splits. Runs before any image is read."""

    def expand(self, records):
        return (records
                | "SubjectSplit" >> beam.Map(lambda r: (r.subject_id, r.split))
                | "DistinctSubjectSplit" >> beam.Distinct()
                | "GroupBySubject" >> beam.GroupByKey()
                | "OneSplitPerSubject" >> beam.FlatMap(_check_one_split))


class CountPatientsAndStudies(beam.PTransform):
    """Written records -> events ``patients/<split>`` and ``studies/<split>``."""

    def expand(self, records):
        counted = []
        for name, key in (("Patients", lambda r: (r.subject_id, r.split)),
                          ("Studies", lambda r: (r.study_id, r.split))):
            counted.append(records
                           | f"{name}Split" >> beam.Map(key)
                           | f"Distinct{name}" >> beam.Distinct()
                           | f"Count{name}" >> beam.Map(lambda s, n=name.lower(): accounting.count(f"{n}/{s[1]}")))
        return counted | "Events" >> beam.Flatten()
