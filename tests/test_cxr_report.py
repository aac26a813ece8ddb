"""--cohort=cxr_report end to end on the generated sample tree: the study choice, report reading and length filter
against a direct reading of the rules over the raw files, the instruction JSONL, patient-disjoint splits, the
release's zip read like the tree; repeated, conflicting or rejected metadata rows reject the study rather than give it
another image; a missing, empty or damaged report is a reject; with --one_per_subject a rejected first study is never
replaced by a later one; zip members found under any folder, copies of one report in the zip one report when
identical and a reject when not; labels and study times against the CSVs; one and two workers write the same bytes;
a wrong --mimic_cxr_reports stopped at launch."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import filecmp
import itertools
import json
import math
import re
import shutil
import struct
import subprocess
import sys
import warnings
import zipfile
from collections import defaultdict
from pathlib import Path

import apache_beam as beam
import pytest

from apache_beam.pvalue import TaggedOutput
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline import accounting, mimic, sample
from beam_pipeline.cohorts import report_sections as rs
from beam_pipeline.cohorts.cxr_report import (UNUSABLE, ChooseStudyImages, ReadReports, StudyRecord, check_reports,
                                              first_study, report_members)
from beam_pipeline.fileio.csv_tables import InputError
from beam_pipeline.fileio.sources import BeamSource, RequesterPaysSource
from beam_pipeline.run import main, run
from cohort_files import examples, read_csv, table_rows
from conftest import ONE_WORKER, create_bucket, published, test_pipeline, write_table


def report_argv(roots: sample.SampleRoots, reports: str, output: Path, *flags: str) -> list[str]:
    return ["--cohort=cxr_report", f"--mimic_cxr_root={roots.cxr}", f"--mimic_cxr_reports={reports}",
            f"--output={output}", "--image_size=32", *flags]


@pytest.fixture(scope="session")
def report_tree(tmp_path_factory):
    return sample.generate(tmp_path_factory.mktemp("cxr-report") / "sample", subjects=120, seed=5)


@pytest.fixture(scope="session")
def report_run(report_tree, tmp_path_factory):
    """The README's command in a fresh interpreter, reports from the tree: (run folder, metadata)."""
    output = tmp_path_factory.mktemp("cxr-report-out") / "out"
    done = subprocess.run([sys.executable, "-m", "beam_pipeline.run",
                           *report_argv(report_tree, report_tree.cxr, output)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    folder = published(output)
    return folder, json.loads((folder / "metadata.json").read_text())


def expected(roots: sample.SampleRoots, one_per_subject: bool = False
             ) -> tuple[dict[str, dict], dict[str, int], dict[int, str]]:
    """dicom_id -> (study, target) per the rules, the drop counts, and the report-stage rejects (study_id ->
    reason)."""
    studies, unreadable = defaultdict(list), defaultdict(list)
    for r in table_rows(roots.cxr, mimic.CXR_METADATA):
        if r["ViewPosition"] == "PA":
            key = (int(r["subject_id"]), int(r["study_id"]))
            try:
                t = mimic.parse_study_datetime(r["StudyDate"], r["StudyTime"])
            except ValueError:
                unreadable[key].append(r["dicom_id"])
                continue
            studies[key].append((r["dicom_id"], t))
    kept, drops, rejected, order = {}, defaultdict(int), {}, []
    for (subject, study), images in sorted(studies.items()):
        dicom_id, t = min(images)
        order.append((subject, t, study, None))  # may be its subject's first study; None: rejected, no record
        if any(d <= dicom_id for d in unreadable.get((subject, study), ())):
            continue  # join/cxr_row_rejected
        path = Path(roots.cxr, mimic.report_path(subject, study))
        text = rs.decode(path.read_bytes()) if path.exists() else None
        if text is None or not text.strip():
            rejected[study] = "missing_report" if text is None else "empty_report"
            continue
        findings, impression, target = rs.target(text)
        words = len(target.split())
        reason = ("no_findings_or_impression" if not target else "target_too_short" if words < 20 else
                  "target_too_long" if words > 65 else None)
        if reason:
            drops[reason] += 1
            order.pop()  # dropped by a rule: never its subject's first study
            continue
        order[-1] = (subject, t, study, dicom_id)
        kept[dicom_id] = {"subject_id": subject, "study_id": study, "time": t, "target": target,
                          "findings": findings, "impression": impression}
    if one_per_subject:  # a study of unknown time (every PA row unreadable) may be the first
        unknown = {subject for subject, study in unreadable if (subject, study) not in studies}
        first = {}
        for subject, _, _, dicom_id in sorted(order, key=lambda o: o[:3]):
            first.setdefault(subject, dicom_id)
        firsts = {dicom_id for subject, dicom_id in first.items() if dicom_id and subject not in unknown}
        drops["not_first_of_subject"] = len(kept) - len(firsts)
        kept = {d: kept[d] for d in firsts}
    return kept, dict(drops), rejected


def run_rejects(folder: Path) -> list[dict]:
    return [json.loads(line) for p in sorted((folder / "rejects").glob("*.jsonl")) for line in p.open()]


def manifest_rows(folder: Path) -> list[dict[str, str]]:
    return [r for p in sorted((folder / "manifest").glob("*.csv")) for r in read_csv(p)]


def adds_up(counts: dict) -> bool:
    return counts["studies"] == sum(counts["dropped"].values()) + counts["rejected"] + counts["matched"] > 0


def test_targets_and_drops_match_the_rules_read_directly(report_tree, report_run):
    folder, metadata = report_run
    want, drops, report_rejects = expected(report_tree)
    records = examples(folder, "dicom_id")
    rejects = run_rejects(folder)
    rejected = {r["dicom_id"] for r in rejects if r["stage"] in ("images", "join", "split")}
    assert {k.decode() for k in records} == set(want) - rejected
    assert {k: v for k, v in metadata["counts"]["dropped"].items() if v} == drops
    assert {r["study_id"]: r["reason"] for r in rejects if r["stage"] == "report"} == report_rejects
    assert sorted(report_rejects.values()) == ["empty_report", "missing_report", "missing_report"]  # planted
    for r in rejects:  # the path, never report text
        if r["stage"] == "report":
            relative = mimic.report_path(r["subject_id"], r["study_id"])
            assert r["detail"] == f"{relative}: " + ("empty" if r["reason"] == "empty_report" else "no such file")
    for key, example in records.items():
        w = want[key.decode()]
        assert example["report/target"] == [w["target"].encode()]
        assert example["report/findings"] == [w["findings"].encode()]
        assert example["report/impression"] == [w["impression"].encode()]
        assert 20 <= example["report/words"][0] <= 65 and example["view_position"] == [b"PA"]
    c = metadata["counts"]
    assert adds_up(c)
    assert sum(c["target_words"].values()) == c["matched"]


def test_instruction_examples_and_patient_disjoint_splits(report_run):
    folder, metadata = report_run
    rows = {r["dicom_id"]: r for p in sorted((folder / "manifest").glob("*.csv")) for r in read_csv(p)}
    by_subject = defaultdict(set)
    for r in rows.values():
        by_subject[r["subject_id"]].add(r["split"])
    assert all(len(splits) == 1 for splits in by_subject.values())
    records = examples(folder, "dicom_id")
    seen = set()
    for split in mimic.SPLITS:
        [path] = (folder / "instructions").glob(f"{split}-*.jsonl")
        for line in path.read_text().splitlines():
            example = json.loads(line)
            user, assistant = example["messages"]
            assert user["role"] == "user" and assistant["role"] == "assistant"
            assert user["content"][0] == {"type": "text", "text": metadata["config"]["instruction"]}
            assert user["content"][1] == {"type": "image",
                                          "image": records[example["id"].encode()]["image/path"][0].decode()}
            assert assistant["content"] == [{"type": "text",
                                             "text": records[example["id"].encode()]["report/target"][0].decode()}]
            assert example["split"] == split == rows[example["id"]]["split"]
            seen.add(example["id"])
    assert seen == set(rows)


def csv_labels(row: dict[str, str] | None, order: list[str]) -> tuple[list, list[int], list[int]]:
    """(raw, binary, mask) of a study's chexpert.csv row under --uncertain_policy=zeros, as the README states them:
    1 -> 1; 0, -1 and blank -> 0, every mask 1; no row, or an all-blank one, is unlabelled (-1, mask 0). Blank is
    None in raw."""
    values = [row[label] if row else "" for label in order]
    if not any(values):
        return [None] * len(order), [-1] * len(order), [0] * len(order)
    raw = [float(v) if v else None for v in values]
    return raw, [int(v == 1.0) for v in raw], [1] * len(order)


def csv_study_datetime(date: str, time: str) -> str:
    """StudyDate (YYYYMMDD) + StudyTime (HHMMSS[.ffffff], leading zeros dropped) as the records spell it, YYYY-MM-DD
    HH:MM:SS[.ffffff]: worked out from the text here, not with mimic's parser."""
    whole, _, fraction = time.partition(".")
    clock, fraction = whole.zfill(6), fraction[:6].ljust(6, "0")
    return f"{date[:4]}-{date[4:6]}-{date[6:]} {clock[:2]}:{clock[2:4]}:{clock[4:]}" + (
        f".{fraction}" if fraction.strip("0") else "")


def test_labels_and_study_datetime_match_the_input_csvs(report_tree, report_run):
    """Every written record's CheXpert labels (raw, binary under the default --uncertain_policy, mask) in the order
    metadata.json records, and its study_datetime, against the CSVs read here: a swapped label column, another
    policy or another row's time would pass every other test."""
    folder, metadata = report_run
    labels = table_rows(report_tree.cxr, mimic.CXR_CHEXPERT)
    order = list(labels[0])[2:]  # the file's own column order
    assert metadata["label_order"] == order == list(mimic.LABELS)
    assert metadata["config"]["uncertain_policy"] == "zeros"  # the default: the run passed none
    by_study = {(r["subject_id"], r["study_id"]): r for r in labels}
    assert len(by_study) == len(labels)  # one row per study in the sample
    times = defaultdict(set)
    for r in table_rows(report_tree.cxr, mimic.CXR_METADATA):
        times[r["dicom_id"]].add((r["StudyDate"], r["StudyTime"]))
    manifest = {r["dicom_id"]: r for r in manifest_rows(folder)}
    cases = set()
    for key, example in examples(folder, "dicom_id").items():
        dicom_id = key.decode()
        row = by_study.get((str(example["subject_id"][0]), str(example["study_id"][0])))
        raw, binary, mask = csv_labels(row, order)
        assert [None if math.isnan(v) else v for v in example["labels/chexpert"]] == raw, dicom_id
        assert (example["labels/binary"], example["labels/mask"]) == (binary, mask), dicom_id
        [(date, time)] = times[dicom_id]
        assert example["study_datetime"] == [csv_study_datetime(date, time).encode()], dicom_id
        assert manifest[dicom_id]["study_datetime"] == csv_study_datetime(date, time), dicom_id
        whole, _, fraction = time.partition(".")
        cases |= {*raw, "no row" if row is None else "all blank" if not any(mask) else "labeled",
                  *(["before 10:00"] if len(whole) < 6 else []), *(["a fraction"] if fraction.strip("0") else [])}
    assert len(manifest) == len(examples(folder, "dicom_id"))
    assert cases >= {1.0, 0.0, -1.0, None, "no row", "all blank", "labeled", "before 10:00", "a fraction"}


def test_one_and_two_workers_write_the_same_bytes(report_tree, report_run, tmp_path):
    """The byte-identical reruns promised above: the same input and config run in one in-process worker and in two
    worker processes (other bundles, other processes), and in the README's command (report_run), write the same
    bytes in every file metadata.json lists, and the same metadata.json but for the run folder it names."""
    folders = []
    for workers in (1, 2):
        run(report_argv(report_tree, report_tree.cxr, tmp_path / f"w{workers}", f"--direct_num_workers={workers}"))
        folders.append(published(tmp_path / f"w{workers}"))
    one, *others = [*folders, report_run[0]]
    metadata = json.loads((one / "metadata.json").read_text())
    assert metadata["config"]["output"] == str(one) and metadata["counts"]["matched"] > 0
    assert {name.split("/")[0] for name in metadata["outputs"]["files"]} == {
        "tfrecords", "manifest", "instructions", "rejects"}
    text = (one / "metadata.json").read_text().replace(str(one), "RUN")
    for other in others:
        for name in metadata["outputs"]["files"]:
            assert filecmp.cmp(one / name, other / name, shallow=False), (other, name)
        assert (other / "metadata.json").read_text().replace(str(other), "RUN") == text, other


def test_the_release_zip_reads_like_the_tree(report_tree, report_run, tmp_path):
    folder, _ = report_run
    archive = tmp_path / "mimic-cxr-reports.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(Path(report_tree.cxr, "files").rglob("*.txt")):
            zipped.write(path, "mimic-cxr-reports/" + str(path.relative_to(report_tree.cxr)))
    run(report_argv(report_tree, str(archive), tmp_path / "zip", ONE_WORKER))
    other = published(tmp_path / "zip")
    for sub in ("tfrecords", "manifest", "instructions", "rejects"):
        names = sorted(p.name for p in (folder / sub).iterdir())
        assert names == sorted(p.name for p in (other / sub).iterdir())
        assert filecmp.cmpfiles(folder / sub, other / sub, names, shallow=False)[0] == names, sub


def test_one_per_subject_keeps_the_earliest_passing_study(report_tree, tmp_path):
    metadata = run(report_argv(report_tree, report_tree.cxr, tmp_path / "one", ONE_WORKER, "--one_per_subject",
                               "--images=false"))
    want, drops, _ = expected(report_tree, one_per_subject=True)
    rows = {r["dicom_id"] for r in manifest_rows(published(tmp_path / "one"))}
    assert rows == set(want)
    assert metadata["counts"]["dropped"]["not_first_of_subject"] == drops["not_first_of_subject"]
    assert adds_up(metadata["counts"])


def tree_copy(roots: sample.SampleRoots, tmp_path: Path) -> sample.SampleRoots:
    """A copy of the sample's CXR root (tables, images, reports) to damage."""
    return sample.SampleRoots(shutil.copytree(roots.cxr, tmp_path / "cxr"), "", "")


@pytest.mark.parametrize("broken", ["report", "image"])
def test_one_per_subject_never_replaces_a_rejected_first_study(report_tree, tmp_path, broken):
    """The subject's first study rejected, at the report (before the choice) or at its image (after): the subject
    has no record, the first study's reject line says why, and its later passing study is not written instead."""
    want, drops, _ = expected(report_tree, one_per_subject=True)
    every, _, _ = expected(report_tree)
    subject, dicom_id = min((w["subject_id"], d) for d, w in want.items()
                            if sum(v["subject_id"] == w["subject_id"] for v in every.values()) > 1)
    study = want[dicom_id]["study_id"]
    copy = tree_copy(report_tree, tmp_path)
    if broken == "report":
        path = Path(copy.cxr, mimic.report_path(subject, study))
        path.write_bytes(b"\xff" + path.read_bytes())  # not UTF-8
    else:
        Path(copy.cxr, mimic.image_path(subject, study, dicom_id)).unlink()
    flags = ("--one_per_subject",) if broken == "image" else ("--one_per_subject", "--images=false")
    metadata = run(report_argv(copy, copy.cxr, tmp_path / "out", ONE_WORKER, *flags))
    out = published(tmp_path / "out")
    assert str(subject) not in {r["subject_id"] for r in manifest_rows(out)}
    reason = ("report", "unreadable_report") if broken == "report" else ("images", "missing_image")
    assert [(r["stage"], r["reason"]) for r in run_rejects(out) if r["study_id"] == study] == [reason]
    c = metadata["counts"]
    assert c["dropped"]["not_first_of_subject"] == drops["not_first_of_subject"]  # the later study, as before
    others = [r for r in run_rejects(out) if r["stage"] == "images" and r["study_id"] != study]  # the sample's own
    assert c["matched"] == len(want) - 1 - len(others)
    assert adds_up(c)


def passing(*days: tuple[int, int]) -> list[StudyRecord]:
    """(study_id, day in January 2180) -> a subject's passing studies."""
    return [dataclasses.replace(study(10000001, study_id), study_time=dt.datetime(2180, 1, day))
            for study_id, day in days]


@pytest.mark.parametrize("unusable, first", [
    ([], 50000002),  # the earliest passing study
    ([(dt.datetime(2180, 1, 9), 50000009)], 50000002),  # a later rejected study does not matter
    ([(dt.datetime(2180, 1, 1), 50000001)], None),  # an earlier one was the first: no record
    ([(dt.datetime(2180, 1, 2), 50000001)], None),  # same time, smaller study_id: it comes first
    ([(dt.datetime(2180, 1, 2), 50000003)], 50000002),
    ([(None, 50000009)], None),  # a study of unknown time may be the first
    ([(None, None)], None),
])
def test_first_study_is_never_a_stand_in(unusable, first):
    records = passing((50000004, 5), (50000002, 2), (50000007, 3))
    chosen, others = first_study(records, unusable)
    assert (chosen and chosen.study_id) == first and others == 3 - (first is not None)
    assert first_study([], unusable) == (None, 0)


# --------------------------------------------------------------------------------------------------------------
# The study's image: repeated, conflicting and rejected metadata rows

def image(dicom_id: str, study_id: int, rows: int = 10) -> mimic.Image:
    return mimic.Image(dicom_id, 10000001, study_id, "PA", rows, 10, dt.datetime(2180, 1, 1, 10))


def read_reject(dicom_id: str | None, study_id: int | None) -> dict:
    return {"stage": "metadata", "reason": "bad_study_time", "subject_id": 10000001, "study_id": study_id,
            "dicom_id": dicom_id, "detail": ""}


def choose(groups: dict) -> tuple[list, list, list, list]:
    """ChooseStudyImages on one subject: (study_id, dicom_id, rows) of its records, (reason, study_id, dicom_id) of
    its rejects, its events, its UNUSABLE marks."""
    out = list(ChooseStudyImages("zeros").process((10000001, groups)))
    tagged = {tag: [o.value for o in out if isinstance(o, TaggedOutput) and o.tag == tag]
              for tag in (accounting.REJECTS, accounting.EVENTS, UNUSABLE)}
    return ([(r.study_id, r.dicom_id, r.image_rows) for r in out if not isinstance(r, TaggedOutput)],
            [(r["reason"], r["study_id"], r["dicom_id"]) for r in tagged[accounting.REJECTS]],
            tagged[accounting.EVENTS], tagged[UNUSABLE])


@pytest.mark.parametrize("policy, uncertain", [("zeros", (0, 1)), ("ones", (1, 1)), ("ignore", (-1, 0))])
def test_the_uncertain_policy_reaches_the_records(policy, uncertain):
    """The whole-run label test uses the default policy only: the flag's value must reach the study's targets.
    Atelectasis uncertain, Cardiomegaly positive, Edema negative, the rest blank (negative, as in CheXpert)."""
    row = {"subject_id": 10000001, "study_id": 1, **dict.fromkeys(mimic.LABELS),
           "Atelectasis": -1.0, "Cardiomegaly": 1.0, "Edema": 0.0}
    [record] = [o for o in ChooseStudyImages(policy).process((10000001, {"images": [image("a", 1)], "labels": [row]}))
                if not isinstance(o, TaggedOutput)]
    at = {name: i for i, name in enumerate(mimic.LABELS)}
    pairs = {name: (record.labels_binary[i], record.labels_mask[i]) for name, i in at.items()}
    assert pairs == {**dict.fromkeys(mimic.LABELS, (0, 1)), "Atelectasis": uncertain, "Cardiomegaly": (1, 1)}
    assert record.labels_raw[at["Atelectasis"]] == -1.0 and math.isnan(record.labels_raw[at["Pneumonia"]])


@pytest.mark.parametrize("images, records, rejects, duplicates", [
    ([image("a", 1), image("a", 1), image("b", 1)], [(1, "a", 10)], [], ("identical_rows", 1)),
    ([image("a", 1), image("a", 2), image("b", 2), image("c", 3)], [(3, "c", 10)],
     [("dicom_id_of_several_studies", 1, "a"), ("dicom_id_of_several_studies", 2, "a")], ("conflicting_keys", 1)),
    ([image("a", 1), image("a", 1, rows=1), image("b", 1)], [], [("conflicting_cxr_metadata", 1, "a")],
     ("conflicting_keys", 1)),
    ([image("a", 1), image("b", 1), image("b", 1, rows=1)], [(1, "a", 10)], [], ("conflicting_keys", 1)),
])
def test_a_repeated_dicom_id_is_one_row_or_rejects_the_studies_that_would_use_it(images, records, rejects,
                                                                                  duplicates):
    """Exact copies are one row; a dicom_id under two studies, or whose rows differ, rejects each study whose
    smallest dicom_id it is (never the next image instead); in any input order."""
    for order in itertools.permutations(images):
        got_records, got_rejects, events, unusable = choose({"images": list(order)})
        assert got_records == records and got_rejects == rejects
        assert (f"duplicates/{duplicates[0]}/cxr_metadata", duplicates[1]) in events
        assert [study_id for _, (_, study_id) in unusable] == [study_id for _, study_id, _ in rejects]
        assert sum(n for name, n in events if name == "studies") == len(records) + len(rejects)


@pytest.mark.parametrize("rejected, records, reason, unknown", [
    (read_reject("a", 1), [], "cxr_row_rejected", []),  # may be the study's smallest
    (read_reject("b", 1), [], "cxr_row_rejected", []),  # a second row of the chosen dicom_id
    (read_reject("a", None), [], "cxr_row_rejected", [None]),  # of any study
    (read_reject(None, 1), [], "cxr_row_rejected", []),  # of any dicom_id
    (read_reject("c", 1), [(1, "b", 10)], None, []),  # above the smallest: not a candidate
    (read_reject("a", 2), [(1, "b", 10)], None, [2]),  # another study, of unknown time
])
def test_a_kept_view_row_rejected_at_read_that_may_be_the_smallest_rejects_the_study(rejected, records, reason,
                                                                                    unknown):
    got_records, got_rejects, _, unusable = choose({"images": [image("b", 1)], "rejected_cxr_metadata": [rejected]})
    assert got_records == records and got_rejects == ([(reason, 1, "b")] if reason else [])
    assert [study_id for _, (time, study_id) in unusable if time is None] == unknown


def test_repeated_conflicting_and_rejected_metadata_rows_on_the_sample(report_tree, report_run, tmp_path):
    """The review's cases on the sample: one dicom_id under two studies of a subject (with its split row; it used to
    stop the job on the duplicate record key), a second, different row of a written dicom_id (its bogus time used
    to be written), a smaller dicom_id with an unreadable time beside a written one (the next image used to be
    written), and a row with a field too many, rejected when read (no dicom_id, no view, no trusted study_id: it may
    be the smallest image of any study of its subject). Each study is rejected, named; the run finishes and its
    counts add up."""
    folder, _ = report_run
    written = sorted((int(r["subject_id"]), int(r["study_id"]), r["dicom_id"]) for r in manifest_rows(folder))
    twice = next(s for s, _, _ in written if sum(w[0] == s for w in written) > 1)
    (_, first, first_dicom), (_, second, _) = [w for w in written if w[0] == twice][:2]
    conflicting, rejected = [w for w in written if w[0] != twice][:2]
    unreadable = next(w for w in written if w[0] not in {twice, conflicting[0], rejected[0]})
    rows = table_rows(report_tree.cxr, mimic.CXR_METADATA)
    row = {r["dicom_id"]: r for r in rows}
    smallest = defaultdict(list)  # the unreadable row's subject: each PA study's smallest dicom_id
    for r in rows:
        if int(r["subject_id"]) == unreadable[0] and r["ViewPosition"] == "PA":
            smallest[int(r["study_id"])].append(r["dicom_id"])
    rows += [dict(row[first_dicom], dicom_id="00000000-dup"), dict(row[first_dicom], dicom_id="00000000-dup",
                                                                   study_id=str(second)),
             dict(row[conflicting[2]], StudyTime="10000.0", Rows="1"),
             dict(row[rejected[2]], dicom_id="00000000-bad", StudyTime="250000.0")]
    cxr = tmp_path / "cxr"
    with write_table(cxr, mimic.CXR_METADATA, rows, gz=False).open("a", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerow([*(row[unreadable[2]][c] for c in mimic.CXR_METADATA.header), "x"])
    write_table(cxr, mimic.CXR_SPLIT, [*table_rows(report_tree.cxr, mimic.CXR_SPLIT), {
        "dicom_id": "00000000-dup", "study_id": first, "subject_id": twice, "split": "train"}])
    shutil.copy(Path(report_tree.cxr, mimic.CXR_CHEXPERT.basename + ".csv.gz"), cxr)
    metadata = run(report_argv(sample.SampleRoots(str(cxr), "", ""), report_tree.cxr, tmp_path / "out", ONE_WORKER,
                               "--images=false"))
    out = published(tmp_path / "out")
    assert sorted((r["reason"], r["study_id"], r["dicom_id"]) for r in run_rejects(out) if r["stage"] == "join") == \
        sorted([("dicom_id_of_several_studies", first, "00000000-dup"),
                ("dicom_id_of_several_studies", second, "00000000-dup"),
                ("conflicting_cxr_metadata", conflicting[1], conflicting[2]),
                ("cxr_row_rejected", rejected[1], rejected[2]),
                *(("cxr_row_rejected", study, min(ids)) for study, ids in smallest.items())])
    assert [(r["reason"], r["subject_id"]) for r in run_rejects(out) if r["stage"] == "read"] == [
        ("wrong_field_count", unreadable[0])]
    manifest = {int(r["study_id"]): r for r in manifest_rows(out)}
    lost = {first, second, conflicting[1], rejected[1], *smallest}
    assert unreadable[1] in smallest and not lost & set(manifest)
    broken = {r["study_id"] for r in run_rejects(folder) if r["stage"] == "images"}  # written here: no images read
    assert set(manifest) - broken == {w[1] for w in written} - lost
    c = metadata["counts"]
    assert c["duplicates"] == {"identical_rows": {"cxr_metadata": 1}, "conflicting_keys": {"cxr_metadata": 2}}
    assert c["rejected_by_reason"]["join/dicom_id_of_several_studies"] == 2 and adds_up(c)


# --------------------------------------------------------------------------------------------------------------
# A damaged member of the zip

REPORT = (b"FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n FINDINGS:  The lungs are clear. No effusion.\n\n"
           b" IMPRESSION:  No acute process.\n")


def reports_zip(path: Path, reports: dict[str, bytes], folder: str = "mimic-cxr-reports/", mode: str = "w") -> Path:
    """The release's layout: deflated members under mimic-cxr-reports/ (or ``folder``); mode "a" adds them."""
    with zipfile.ZipFile(path, mode, zipfile.ZIP_DEFLATED) as zipped:
        for relative, text in reports.items():
            zipped.writestr(f"{folder}{relative}", text)
    return path


def damage(archive: Path, relative: str, how: str) -> None:
    """Damage one member in place: its deflate data (the first byte 0xFF: a block of the reserved type), its local
    header (an extra field running past the archive's end) or its directory entry (the encrypted flag)."""
    data = bytearray(archive.read_bytes())
    name = f"mimic-cxr-reports/{relative}".encode()
    header = data.index(name) - 30  # the local header comes first, the directory entry at the end
    if how == "deflate":
        name_length, extra_length = struct.unpack_from("<HH", data, header + 26)
        data[header + 30 + name_length + extra_length] = 0xFF
    elif how == "past_the_end":
        struct.pack_into("<H", data, header + 28, 0xFFFF)
    else:
        entry = data.index(name, data.index(b"PK\x01\x02")) - 46
        data[entry + 8] |= 1
    archive.write_bytes(bytes(data))


def study(subject_id: int, study_id: int) -> StudyRecord:
    return StudyRecord(subject_id=subject_id, study_id=study_id, dicom_id=f"d{study_id}", view_position="PA",
                       study_time=dt.datetime(2180, 1, 1), image_path="", image_rows=None, image_columns=None,
                       labels_raw=(), labels_binary=(), labels_mask=(), labels_status="all_blank")


@pytest.mark.parametrize("how", ["deflate", "past_the_end", "encrypted"])
def test_a_damaged_zip_member_is_a_counted_reject_and_the_next_report_is_read(tmp_path, how):
    damaged, good = mimic.report_path(10000001, 50000001), mimic.report_path(10000002, 50000002)
    archive = reports_zip(tmp_path / "mimic-cxr-reports.zip", {damaged: REPORT, good: REPORT})
    damage(archive, damaged, how)
    reader = ReadReports(str(archive), BeamSource(), 1, 100)
    reader.setup()
    out = list(reader.process(study(10000001, 50000001)))
    [reject] = [o.value for o in out if o.tag == accounting.REJECTS]
    assert (reject["stage"], reject["reason"], reject["study_id"]) == ("report", "unreadable_report", 50000001)
    assert reject["detail"].startswith(f"{damaged}: BadZipFile: ")
    assert [o.value for o in out if o.tag == accounting.EVENTS] == [("rejects/report/unreadable_report", 1),
                                                                    ("rejected", 1)]
    [record] = [o for o in reader.process(study(10000002, 50000002)) if not isinstance(o, TaggedOutput)]
    assert record.target == "The lungs are clear. No effusion. No acute process."


@pytest.mark.parametrize("layout", ["tree", "zip"])
@pytest.mark.parametrize("content, reason, detail", [
    (None, "missing_report", "no such file"), (b"", "empty_report", "empty"), (b" \n \r\n\t", "empty_report", "empty")])
def test_a_missing_or_empty_report_is_a_reject_naming_its_path(tmp_path, layout, content, reason, detail):
    """MIMIC-CXR has a report for every study: no file, or one with nothing but whitespace, is bad input, not a
    study without findings. The reject names the path; the study is UNUSABLE for --one_per_subject."""
    relative, other = mimic.report_path(10000001, 50000001), mimic.report_path(10000002, 50000002)
    reports = {other: REPORT, **({} if content is None else {relative: content})}
    if layout == "zip":
        where = str(reports_zip(tmp_path / "mimic-cxr-reports.zip", reports))
    else:
        for path, text in reports.items():
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_bytes(text)
        where = str(tmp_path)
    reader = ReadReports(where, BeamSource(), 1, 100)
    reader.setup()
    record = study(10000001, 50000001)
    out = list(reader.process(record))
    assert [o.value for o in out if o.tag == accounting.REJECTS] == [{
        "stage": "report", "reason": reason, "subject_id": 10000001, "study_id": 50000001, "dicom_id": "d50000001",
        "detail": f"{relative}: {detail}"}]
    assert [o.value for o in out if o.tag == accounting.EVENTS] == [(f"rejects/report/{reason}", 1), ("rejected", 1)]
    assert [o.value for o in out if o.tag == UNUSABLE] == [(10000001, (record.study_time, 50000001))]
    [passed] = [o for o in reader.process(study(10000002, 50000002)) if not isinstance(o, TaggedOutput)]
    assert passed.target == "The lungs are clear. No effusion. No acute process."


@pytest.mark.parametrize("broken", ["damaged", "conflicting"])
def test_a_run_with_a_damaged_or_conflicting_zip_member_rejects_that_study_and_the_counts_add_up(
        report_tree, report_run, tmp_path, broken):
    """A damaged member, or a second folder in the zip holding another report at the study's path (and the same
    bytes at another's, which is still written as before): that study alone is rejected and counted."""
    folder, _ = report_run
    records = iter(examples(folder, "dicom_id").values())
    victim, copied = next(records), next(records)
    relative, also = (mimic.report_path(r["subject_id"][0], r["study_id"][0]) for r in (victim, copied))
    reports = {str(path.relative_to(report_tree.cxr)): path.read_bytes()
               for path in sorted(Path(report_tree.cxr, "files").rglob("*.txt"))}
    archive = reports_zip(tmp_path / "mimic-cxr-reports.zip", reports)
    if broken == "damaged":
        damage(archive, relative, "deflate")
    else:
        reports_zip(archive, {relative: REPORT, also: reports[also]}, "copy/", mode="a")
    metadata = run(report_argv(report_tree, str(archive), tmp_path / "out", ONE_WORKER, "--images=false"))
    out = published(tmp_path / "out")
    reason = "unreadable_report" if broken == "damaged" else "conflicting_report"
    [reject] = [r for r in run_rejects(out) if r["reason"] in ("unreadable_report", "conflicting_report")]
    assert (reject["reason"], reject["study_id"]) == (reason, victim["study_id"][0])
    if broken == "conflicting":
        assert reject["detail"] == f"{relative}: zip members differ: mimic-cxr-reports/{relative}, copy/{relative}"
        assert examples(out, "dicom_id")[copied["dicom_id"][0]]["report/target"] == copied["report/target"]
    assert victim["study_id"][0] not in {int(r["study_id"]) for r in manifest_rows(out)}
    assert metadata["counts"]["rejected_by_reason"][f"report/{reason}"] == 1
    assert adds_up(metadata["counts"])


OTHER_REPORT = REPORT.replace(b"No acute process.", b"Small left pleural effusion.")


@pytest.mark.parametrize("folders", [("a/", "b/"), ("a/", "a/")])  # two folders; one name written twice
@pytest.mark.parametrize("second", [REPORT, OTHER_REPORT])
def test_copies_of_a_report_in_the_zip_are_one_report_when_identical_and_a_reject_when_not(tmp_path, folders,
                                                                                           second):
    """Members at one report path used to be resolved to the last in the archive. The same bytes are the report
    (the extra copy counted under duplicates/identical_rows/report); different bytes reject the study as
    conflicting_report naming every member (never the text), and the launch check lets the zip through: one
    doubtful report costs its study, not the job."""
    relative = mimic.report_path(10000001, 50000001)
    archive = reports_zip(tmp_path / "mimic-cxr-reports.zip", {relative: REPORT}, folders[0])
    with warnings.catch_warnings():  # zipfile warns of a name written twice; that is the case
        warnings.simplefilter("ignore")
        reports_zip(archive, {relative: second}, folders[1], mode="a")
    check_reports(str(archive), BeamSource())
    reader = ReadReports(str(archive), BeamSource(), 1, 100)
    reader.setup()
    record = study(10000001, 50000001)
    out = list(reader.process(record))
    written = [o.target for o in out if not isinstance(o, TaggedOutput)]
    if second == REPORT:  # one report, and its extra copy counted as exact copies of a row are
        assert written == ["The lungs are clear. No effusion. No acute process."]
        assert [o.value for o in out if isinstance(o, TaggedOutput)] == [("duplicates/identical_rows/report", 1)]
        return
    assert written == []
    members = ", ".join(folder + relative for folder in folders)
    assert [o.value for o in out if o.tag == accounting.REJECTS] == [{
        "stage": "report", "reason": "conflicting_report", "subject_id": 10000001, "study_id": 50000001,
        "dicom_id": "d50000001", "detail": f"{relative}: zip members differ: {members}"}]
    assert [o.value for o in out if o.tag == accounting.EVENTS] == [("rejects/report/conflicting_report", 1),
                                                                    ("rejected", 1)]
    assert [o.value for o in out if o.tag == UNUSABLE] == [(10000001, (record.study_time, 50000001))]


# --------------------------------------------------------------------------------------------------------------
# --mimic_cxr_reports checked at launch

MIRROR = "physionet.org/files/mimic-cxr/2.1.0/"  # a zipped wget mirror: its first "files/" is not the tree's


def test_report_members_are_keyed_by_their_path_in_the_tree():
    names = ["mimic-cxr-reports/", "mimic-cxr-reports/files/p10/p10000001/s5.txt", "files/a.txt",
             "mimic-cxr-reports/files/p10/p10000001/s5.jpg", "README.txt", f"{MIRROR}files/p10/p10000002/s6.txt",
             "myfiles/files/p11/p11000003/s7.txt", "files/p12/p12000004/s8.txt",
             f"{MIRROR}files/p10/p10000002/notes.txt", "copy/files/p10/p10000001/s5.txt"]
    assert {path: [m.filename for m in members]
            for path, members in report_members(map(zipfile.ZipInfo, names)).items()} == {
        "files/p10/p10000001/s5.txt": ["mimic-cxr-reports/files/p10/p10000001/s5.txt",
                                       "copy/files/p10/p10000001/s5.txt"],  # every copy, in archive order
        "files/p10/p10000002/s6.txt": [f"{MIRROR}files/p10/p10000002/s6.txt"],
        "files/p11/p11000003/s7.txt": ["myfiles/files/p11/p11000003/s7.txt"],
        "files/p12/p12000004/s8.txt": ["files/p12/p12000004/s8.txt"]}


@pytest.mark.parametrize("name, folder", [("mirror.zip", MIRROR), ("myfiles.zip", "myfiles/reports/"),
                                          ("MIMIC-CXR-REPORTS.ZIP", "mimic-cxr-reports/")])
def test_a_zip_is_read_under_any_folder_and_in_any_case(tmp_path, name, folder):
    """The tree's path is found at the end of a member's name (not after its first "files/"), and a .ZIP is a zip:
    the launch check and the reader agree."""
    relative = mimic.report_path(10000001, 50000001)
    archive = reports_zip(tmp_path / name, {relative: REPORT}, folder)
    check_reports(str(archive), BeamSource())
    reader = ReadReports(str(archive), BeamSource(), 1, 100)
    reader.setup()
    [record] = reader.process(study(10000001, 50000001))
    assert record.target == "The lungs are clear. No effusion. No acute process."


@pytest.mark.parametrize("layout, message", [
    ("missing_folder", "no report found there"),
    ("folder_without_reports", "no report found there"),
    ("missing_zip", "no such file"),
    ("zip_without_reports", "no report found there"),
    ("zip_with_other_text", "no report found there"),
    ("folder_with_other_text", "no report found there"),
    ("not_a_zip", "cannot be read (File is not a zip file)"),
])
def test_wrong_reports_fail_naming_the_path(tmp_path, layout, message):
    path = tmp_path / ("reports.zip" if "zip" in layout else "reports")
    if layout == "folder_without_reports":
        (path / "files" / "p10").mkdir(parents=True)
        (path / "files" / "p10" / "image.jpg").write_bytes(b"x")
    elif layout == "zip_without_reports":
        reports_zip(path, {"README": b"x"})
    elif layout == "zip_with_other_text":
        reports_zip(path, {"files/README.txt": b"x", "files/p10/notes.txt": b"x"}, MIRROR)
    elif layout == "folder_with_other_text":
        (path / "files" / "p10").mkdir(parents=True)
        (path / "files" / "README.txt").write_bytes(b"x")
        (path / "files" / "p10" / "notes.txt").write_bytes(b"x")
    elif layout == "not_a_zip":
        path.write_bytes(b"not a zip")
    with pytest.raises(InputError, match=rf"^--mimic_cxr_reports={path}: {re.escape(message)}"):
        check_reports(str(path), BeamSource())


def test_reports_found_in_a_folder_or_a_zip_pass(tmp_path):
    relative = mimic.report_path(10000001, 50000001)
    (tmp_path / relative).parent.mkdir(parents=True)
    (tmp_path / relative).write_bytes(REPORT)
    check_reports(str(tmp_path), BeamSource())
    check_reports(str(reports_zip(tmp_path / "r.zip", {relative: REPORT})), BeamSource())


def test_reports_on_gcs_are_checked(gcs_server):
    client, proxy = gcs_server
    bucket = create_bucket(client, proxy, "cxr-reports-check")
    bucket.blob(f"reports/{mimic.report_path(10000001, 50000001)}").upload_from_string(REPORT)
    check_reports("gs://cxr-reports-check/reports", BeamSource())
    for wrong, message in (("gs://cxr-reports-check/report", "no report found there"),
                           ("gs://cxr-reports-check/reports.zip", "no such file")):
        with pytest.raises(InputError, match=f"^--mimic_cxr_reports={wrong}: {message}"):
            check_reports(wrong, BeamSource())
    create_bucket(client, proxy, "rp-cxr-reports-check")
    billed = RequesterPaysSource("billing-proj")
    check_reports("gs://rp-cxr-reports-check/reports", billed)  # not listed: Beam's listing cannot bill the bucket
    with pytest.raises(InputError, match="^--mimic_cxr_reports=gs://rp-cxr-reports-check/r.zip: no such file"):
        check_reports("gs://rp-cxr-reports-check/r.zip", billed)


@pytest.mark.parametrize("wrong", ["nowhere", "nowhere.zip"])
def test_the_entry_point_stops_at_launch_on_wrong_reports(report_tree, tmp_path, wrong):
    path = tmp_path / wrong
    with pytest.raises(SystemExit, match=f"^error: --mimic_cxr_reports={path}: "):
        main(report_argv(report_tree, str(path), tmp_path / "out", ONE_WORKER))
    assert not (tmp_path / "out").exists()


def test_a_reports_own_header_is_counted_for_metadata_but_never_names_a_beam_counter():
    """Beam counters are shown to every viewer of a Dataflow job: a header as written in a report (free text, maybe
    seen once) is summed into section_coverage but counted under one fixed counter name."""
    record = StudyRecord(
        10000032, 50000001, "d1", "PA", dt.datetime(2180, 7, 22, 16, 24), "files/p10/x.jpg", 10, 10, (), (), (),
        "labeled", target="no acute process", sections=("findings", "wet read by dr jones", "impression"), split="val")
    p = test_pipeline()
    counted = p | beam.Create([record]) | beam.ParDo(accounting.CountWritten()).with_outputs(
        accounting.EVENTS, main="records")
    assert_that(counted[accounting.EVENTS] | beam.Filter(lambda e: e[0].startswith("sections/")),
                equal_to([("sections/findings", 1), ("sections/impression", 1), ("sections/wet read by dr jones", 1)]))
    counters = {m.key.metric.name for m in p.run().metrics().query()["counters"]}
    assert {"sections/findings", "sections/impression", "sections/other_header"} <= counters
    assert not any("jones" in name for name in counters)
