"""Patient-level splits, and a check in the pipeline that no patient is in two splits.

``hash``: the split is a pure function of (salt, subject_id) via sha256, so it is the same on every worker and every
rerun, and a patient's images always land together. ``official``: the MIMIC-CXR split file, per image
(``validate`` -> ``val``); images missing from it are rejected. Either way the job fails if a subject_id ends up in
more than one split.
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


class AssignSplit(beam.DoFn):
    def __init__(self, strategy: str, salt: str, fractions: Sequence[float]):
        self._strategy = strategy
        self._salt = salt
        self._fractions = tuple(fractions)

    def process(self, record: Record):
        if self._strategy == "hash":
            split = hash_split(record.subject_id, self._salt, self._fractions)
        else:
            split = mimic.OFFICIAL_SPLITS.get(record.official_split or "")
            if split is None:
                reason = "not_in_official_split" if record.official_split is None else "unknown_official_split"
                yield from accounting.reject(STAGE, reason, subject_id=record.subject_id,
                                             study_id=record.study_id, dicom_id=record.dicom_id,
                                             detail=f"cxr_split: split={record.official_split!r}",
                                             counter="rejected")
                return
        yield dataclasses.replace(record, split=split)


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
        for name, key in (("Patients", lambda r: (r.subject_id, r.split)), ("Studies", lambda r: (r.study_id, r.split))):
            counted.append(records
                           | f"{name}Split" >> beam.Map(key)
                           | f"Distinct{name}" >> beam.Distinct()
                           | f"Count{name}" >> beam.Map(lambda s, n=name.lower(): accounting.count(f"{n}/{s[1]}")))
        return counted | "Events" >> beam.Flatten()
