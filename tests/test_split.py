import collections
import dataclasses
import datetime as dt

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline.transforms.records import Record
from beam_pipeline.transforms.split import (AssertPatientDisjoint, AssignSplits, CountPatientsAndStudies,
                                            PatientOverlapError, hash_split, most_held_out, unit_interval)
from conftest import test_pipeline

FRACTIONS = (0.7, 0.15, 0.15)
VAL_SUBJECT = 10000003


def record(subject_id, dicom_id, study_id=50000000, official=None, split=None):
    t = dt.datetime(2180, 1, 1)
    return Record(subject_id, study_id, dicom_id, 30000000, "PA", t, t, None, "p", None, None, "", "", (), (), (), (),
                  (), official, split)


def file_rows(records, *more):
    """The split file's rows of the records (those with an official value), plus ``more`` (subject, dicom, value)."""
    return ([{"dicom_id": r.dicom_id, "subject_id": r.subject_id, "split": r.official_split}
             for r in records if r.official_split is not None]
            + [{"dicom_id": d, "subject_id": s, "split": v} for s, d, v in more])


def assign_official(p, records, *more):
    return (p | "Records" >> beam.Create(records)
            | AssignSplits("official", "s", FRACTIONS, p | "SplitFile" >> beam.Create(file_rows(records, *more))))


def test_hash_split_is_stable_across_releases():
    """Golden values (sha256 of "mimic-cxr-ed-v1:<subject_id>"): if these change, published splits move."""
    assert unit_interval("mimic-cxr-ed-v1:10000032") == pytest.approx(0.321716, abs=1e-6)
    got = {s: hash_split(s, "mimic-cxr-ed-v1", FRACTIONS) for s in (10000032, 10001217, 10014354, VAL_SUBJECT)}
    assert got == {10000032: "train", 10001217: "test", 10014354: "test", VAL_SUBJECT: "val"}


def test_hash_split_fractions_and_salt():
    subjects = range(10000000, 10020000)
    counts = collections.Counter(hash_split(s, "salt", FRACTIONS) for s in subjects)
    assert abs(counts["train"] / 20000 - 0.7) < 0.015 and abs(counts["val"] / 20000 - 0.15) < 0.015
    moved = sum(hash_split(s, "salt", FRACTIONS) != hash_split(s, "other", FRACTIONS) for s in subjects)
    assert moved > 5000  # a new salt reshuffles
    assert {hash_split(s, "salt", (1.0, 0.0, 0.0)) for s in range(1000)} == {"train"}
    assert {hash_split(s, "salt", (0.0, 0.0, 1.0)) for s in range(1000)} == {"test"}


def test_hash_assignment_keeps_a_patients_images_together():
    records = [record(10000000 + i % 50, f"d{i}") for i in range(500)]
    with test_pipeline() as p:
        out = (p | beam.Create(records)
               | AssignSplits("hash", "s", FRACTIONS))
        splits_per_patient = (out.records
                              | beam.Map(lambda r: (r.subject_id, r.split))
                              | "DistinctPairs" >> beam.Distinct()
                              | beam.combiners.Count.PerKey()
                              | beam.Map(lambda kv: kv[1])
                              | "DistinctCounts" >> beam.Distinct())
        assert_that(splits_per_patient, equal_to([1]))


def test_official_split_maps_validate_and_rejects_missing():
    records = [record(1, "a", official="train"), record(2, "b", official="validate"), record(3, "c", official="test"),
               record(4, "d", official=None), record(5, "e", official="holdout")]
    with test_pipeline() as p:
        out = assign_official(p, records)
        assert_that(out.records | beam.Map(lambda r: (r.dicom_id, r.split)),
                    equal_to([("a", "train"), ("b", "val"), ("c", "test")]))
        assert_that(out.rejects | beam.Map(lambda r: (r["dicom_id"], r["reason"])),
                    equal_to([("d", "not_in_official_split"), ("e", "unknown_official_split")]), label="Rejects")
        assert_that(out.events, equal_to([("rejected", 1), ("rejected", 1), ("rejects/split/not_in_official_split", 1),
                                          ("rejects/split/unknown_official_split", 1)]), label="Events")


def test_a_patient_in_several_official_splits_moves_to_the_most_held_out_one():
    assert most_held_out({"train", "val"}) == "val" and most_held_out({"val", "test", "train"}) == "test"
    records = [record(1, "a", official="train"), record(1, "b", official="test"), record(1, "c", official="train"),
               record(2, "d", official="validate"), record(2, "e", official="train"), record(2, "f"),
               record(3, "g", official="train")]
    with test_pipeline() as p:
        out = assign_official(p, records)
        assert_that(out.records | beam.Map(lambda r: (r.dicom_id, r.split)),
                    equal_to([("a", "test"), ("b", "test"), ("c", "test"), ("d", "val"), ("e", "val"),
                              ("g", "train")]))
        assert_that(out.events | beam.CombinePerKey(sum),
                    equal_to([("split_reassigned_patients", 2), ("split_reassigned_records", 3), ("rejected", 1),
                              ("rejects/split/not_in_official_split", 1),
                              ("split_file_patients_in_several_splits", 2)]), label="Events")
        assert_that(out.records | AssertPatientDisjoint(), equal_to([]), label="Disjoint")


def test_a_patients_official_split_is_taken_over_the_whole_split_file():
    """Rows of images this run did not keep (another view, no stay, rejected in the join) still place the patient,
    so its split is a function of the file: subject 1's only record is in train, its image of another view in test.
    Every version of a conflicting dicom_id counts (subject 2: its image is rejected upstream and may be a test
    image); a value that is no split counts for nothing (subject 3); a subject with no record still counts as in
    several splits of the file (subject 4)."""
    records = [record(1, "a", official="train"), record(2, "c", official="train"), record(3, "e", official="train")]
    more = [(1, "b-lateral", "test"), (2, "d-conflict", "train"), (2, "d-conflict", "validate"),
            (3, "f", "holdout"), (4, "g", "train"), (4, "h", "test")]
    with test_pipeline() as p:
        out = assign_official(p, records, *more)
        assert_that(out.records | beam.Map(lambda r: (r.dicom_id, r.split)),
                    equal_to([("a", "test"), ("c", "val"), ("e", "train")]))
        assert_that(out.events | beam.CombinePerKey(sum),
                    equal_to([("split_reassigned_patients", 2), ("split_reassigned_records", 2),
                              ("split_file_patients_in_several_splits", 3)]), label="Events")


def test_the_official_split_needs_the_split_file():
    with pytest.raises(ValueError, match="split file"):
        AssignSplits("official", "s", FRACTIONS)


def test_written_records_count_patients_and_studies_and_pass_the_disjointness_check():
    records = [record(1, "a", 51, split="train"), record(1, "b", 51, split="train"), record(1, "c", 52, split="train"),
               record(2, "d", 53, split="test")]
    with test_pipeline() as p:
        created = p | beam.Create(records)
        events = created | CountPatientsAndStudies() | beam.CombinePerKey(sum)
        assert_that(events, equal_to([("patients/train", 1), ("patients/test", 1), ("studies/train", 2),
                                      ("studies/test", 1)]), label="Counts")
        assert_that(created | AssertPatientDisjoint(), equal_to([]), label="Checked")


def test_patient_in_two_splits_fails_the_job():
    records = [record(1, "a", split="train"), dataclasses.replace(record(1, "b"), split="val")]
    with pytest.raises(Exception, match="subject 1 appears in splits") as err:
        with test_pipeline() as p:
            _ = p | beam.Create(records) | AssertPatientDisjoint()
    assert isinstance(err.value, PatientOverlapError) or "PatientOverlapError" in str(err.value)
