"""--cohort=cxr_report end to end on the generated sample tree: the study choice, report reading and length filter
against a direct reading of the rules over the raw files, the instruction JSONL, patient-disjoint splits, the
release's zip read like the tree, byte-identical reruns; a damaged zip member rejected, not fatal; a wrong
--mimic_cxr_reports stopped at launch."""

from __future__ import annotations

import datetime as dt
import filecmp
import json
import re
import struct
import subprocess
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

import apache_beam as beam
import pytest

from apache_beam.pvalue import TaggedOutput
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline import accounting, mimic, sample
from beam_pipeline.cohorts import report_sections as rs
from beam_pipeline.cohorts.cxr_report import ReadReports, StudyRecord, check_reports, report_members
from beam_pipeline.fileio.csv_tables import InputError
from beam_pipeline.fileio.sources import BeamSource, RequesterPaysSource
from beam_pipeline.run import main, run
from cohort_files import examples, read_csv, table_rows
from conftest import ONE_WORKER, create_bucket, published, test_pipeline


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


def expected(roots: sample.SampleRoots, one_per_subject: bool = False) -> tuple[dict[str, dict], dict[str, int]]:
    """dicom_id -> (study, target) per the rules, and the drop counts."""
    studies = defaultdict(list)
    for r in table_rows(roots.cxr, mimic.CXR_METADATA):
        if r["ViewPosition"] == "PA":
            try:
                t = mimic.parse_study_datetime(r["StudyDate"], r["StudyTime"])
            except ValueError:
                continue
            studies[(int(r["subject_id"]), int(r["study_id"]))].append((r["dicom_id"], t))
    kept, drops = {}, defaultdict(int)
    for (subject, study), images in sorted(studies.items()):
        path = Path(roots.cxr, mimic.report_path(subject, study))
        if not path.exists():
            drops["no_report"] += 1
            continue
        findings, impression, target = rs.target(rs.decode(path.read_bytes()))
        words = len(target.split())
        reason = ("no_findings_or_impression" if not target else "target_too_short" if words < 20 else
                  "target_too_long" if words > 65 else None)
        if reason:
            drops[reason] += 1
            continue
        dicom_id, t = min(images)
        kept[dicom_id] = {"subject_id": subject, "study_id": study, "time": t, "target": target,
                          "findings": findings, "impression": impression}
    if one_per_subject:
        first = {}
        for dicom_id, k in sorted(kept.items(), key=lambda item: (item[1]["time"], item[1]["study_id"])):
            first.setdefault(k["subject_id"], dicom_id)
        drops["not_first_of_subject"] = len(kept) - len(first)
        kept = {d: kept[d] for d in first.values()}
    return kept, dict(drops)


def test_targets_and_drops_match_the_rules_read_directly(report_tree, report_run):
    folder, metadata = report_run
    want, drops = expected(report_tree)
    records = examples(folder, "dicom_id")
    rejects = [json.loads(line) for p in (folder / "rejects").glob("*.jsonl") for line in p.open()]
    rejected = {r["dicom_id"] for r in rejects if r["stage"] in ("images", "join", "split", "report")}
    assert {k.decode() for k in records} == set(want) - rejected
    assert {k: v for k, v in metadata["counts"]["dropped"].items() if v} == drops
    for key, example in records.items():
        w = want[key.decode()]
        assert example["report/target"] == [w["target"].encode()]
        assert example["report/findings"] == [w["findings"].encode()]
        assert example["report/impression"] == [w["impression"].encode()]
        assert 20 <= example["report/words"][0] <= 65 and example["view_position"] == [b"PA"]
    c = metadata["counts"]
    assert c["studies"] == sum(c["dropped"].values()) + c["rejected"] + c["matched"]
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
    want, drops = expected(report_tree, one_per_subject=True)
    rows = {r["dicom_id"] for p in (published(tmp_path / "one") / "manifest").glob("*.csv") for r in read_csv(p)}
    assert rows == set(want)
    assert metadata["counts"]["dropped"]["not_first_of_subject"] == drops["not_first_of_subject"]


# --------------------------------------------------------------------------------------------------------------
# A damaged member of the zip

REPORT = (b"FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n FINDINGS:  The lungs are clear. No effusion.\n\n"
           b" IMPRESSION:  No acute process.\n")


def reports_zip(path: Path, reports: dict[str, bytes]) -> Path:
    """The release's layout: deflated members under mimic-cxr-reports/."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zipped:
        for relative, text in reports.items():
            zipped.writestr(f"mimic-cxr-reports/{relative}", text)
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


def test_a_run_with_a_damaged_zip_member_rejects_that_study_and_the_counts_add_up(report_tree, report_run, tmp_path):
    folder, _ = report_run
    victim = next(iter(examples(folder, "dicom_id").values()))
    relative = mimic.report_path(victim["subject_id"][0], victim["study_id"][0])
    archive = reports_zip(tmp_path / "mimic-cxr-reports.zip", {
        str(path.relative_to(report_tree.cxr)): path.read_bytes()
        for path in sorted(Path(report_tree.cxr, "files").rglob("*.txt"))})
    damage(archive, relative, "deflate")
    metadata = run(report_argv(report_tree, str(archive), tmp_path / "out", ONE_WORKER, "--images=false"))
    out = published(tmp_path / "out")
    rejects = [json.loads(line) for p in (out / "rejects").glob("*.jsonl") for line in p.open()]
    assert [(r["reason"], r["study_id"]) for r in rejects if r["stage"] == "report"] == [
        ("unreadable_report", victim["study_id"][0])]
    assert victim["study_id"][0] not in {int(r["study_id"]) for p in (out / "manifest").glob("*.csv")
                                         for r in read_csv(p)}
    c = metadata["counts"]
    assert c["matched"] > 0 and c["studies"] == sum(c["dropped"].values()) + c["rejected"] + c["matched"]


# --------------------------------------------------------------------------------------------------------------
# --mimic_cxr_reports checked at launch

def test_report_members_are_keyed_by_their_path_in_the_tree():
    assert report_members(["mimic-cxr-reports/", "mimic-cxr-reports/files/p10/p10000001/s5.txt", "files/a.txt",
                           "mimic-cxr-reports/files/p10/p10000001/s5.jpg", "README.txt"]) == {
        "files/p10/p10000001/s5.txt": "mimic-cxr-reports/files/p10/p10000001/s5.txt", "files/a.txt": "files/a.txt"}


@pytest.mark.parametrize("layout, message", [
    ("missing_folder", "no report found there"),
    ("folder_without_reports", "no report found there"),
    ("missing_zip", "no such file"),
    ("zip_without_reports", "no report found there"),
    ("not_a_zip", "cannot be read (File is not a zip file)"),
])
def test_wrong_reports_fail_naming_the_path(tmp_path, layout, message):
    path = tmp_path / ("reports.zip" if "zip" in layout else "reports")
    if layout == "folder_without_reports":
        (path / "files" / "p10").mkdir(parents=True)
        (path / "files" / "p10" / "image.jpg").write_bytes(b"x")
    elif layout == "zip_without_reports":
        reports_zip(path, {"README": b"x"})
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
