"""Fault suite, CSV reading (issue #12 items 1, 4 and 6): each fault on a fresh copy of the sample tree, the job run
as users run it, the exact outcome asserted (the error naming file and line, or the reject and its counters) and the
counts checked against the clean run."""

from __future__ import annotations

import gzip

import pytest

from beam_pipeline import mimic
from beam_pipeline.run import run
from conftest import ONE_WORKER
from faults import (assert_counts_add_up, edit_table, fresh_tree, read_table_bytes, rejects, run_cli, run_job,
                    table_path)
from test_csv_tables import damaged_deflate
from test_faults_images import manifest

METADATA = "mimic-cxr-2.0.0-metadata.csv.gz"


def edit_line(number: int, edit):
    """A table edit that changes physical line ``number`` (1 = the header) with ``edit(bytes) -> bytes``."""

    def apply(data: bytes) -> bytes:
        lines = data.split(b"\n")
        lines[number - 1] = edit(lines[number - 1])
        return b"\n".join(lines)

    return apply


def quoted_line(data: bytes) -> int:
    """The number of the first line holding a quoted field (a chief complaint with a comma)."""
    return next(n for n, line in enumerate(data.split(b"\n"), 1) if b'"' in line)


def read_rejects(output, path) -> list[dict]:
    """The rejects of reading the file at ``path`` (the clean tree has a few of its own, in other tables)."""
    return [r for r in rejects(output) if r["stage"] == "read" and r["detail"].startswith(f"{path}:")]


def without(counts: dict, *keys: str) -> dict:
    return {k: v for k, v in counts.items() if k not in keys}


@pytest.mark.parametrize("workers", [(), ("--direct_num_workers=2", "--direct_running_mode=multi_processing")],
                         ids=["in-process", "two-worker-processes"])
def test_unclosed_quote_fails_the_job_naming_the_line(clean_tree, tmp_path, workers):
    """The fault that once swallowed 168 of 178 metadata rows into one record and exited 0. With worker processes
    (the local default) the error crosses the runner as text; the CLI still ends with the same one-line error."""
    roots = fresh_tree(clean_tree, tmp_path)
    edit_table(roots.cxr, mimic.CXR_METADATA, edit_line(12, lambda line: line.replace(b",", b',"', 1)))
    done = run_cli(roots, tmp_path / "out", *workers)
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert (f"error: {table_path(roots.cxr, mimic.CXR_METADATA)}:12: a quoted field opened here spans more than "
            f"{mimic.MAX_RECORD_LINES} lines (no MIMIC field does): is its closing quote missing?") in done.stderr
    assert not (tmp_path / "out" / "LATEST").exists()


def test_unclosed_quote_closed_by_a_later_field_fails_the_job(clean_tree, tmp_path):
    """In triage the next chief complaint's opening quote closes the runaway a line later: strict quoting catches
    what the line limit cannot (this once dropped a stay's chief complaint silently)."""
    roots = fresh_tree(clean_tree, tmp_path)
    path = table_path(roots.ed, mimic.TRIAGE)
    line = quoted_line(gzip.decompress(path.read_bytes()))
    edit_table(roots.ed, mimic.TRIAGE, edit_line(line, lambda text: text.rstrip(b'"')))
    done = run_cli(roots, tmp_path / "out")
    assert done.returncode != 0
    assert f"error: {path}:{line}: a quoted field opened here swallows the lines after it" in done.stderr


def test_quote_error_on_one_line_is_a_reject(clean_tree, clean_run, tmp_path):
    roots = fresh_tree(clean_tree, tmp_path)
    path = edit_table(roots.cxr, mimic.CXR_METADATA, edit_line(5, lambda line: line.replace(b",", b',"x"y,', 1)))
    metadata = run_job(roots, tmp_path / "out")
    counts, clean = metadata["counts"], clean_run[1]["counts"]
    assert [(r["reason"], r["detail"]) for r in read_rejects(tmp_path / "out", path)] == [
        ("bad_quoting", f"{path}:5: a quote in this line is not closed or is followed by more text")]
    assert counts["images_total"] == clean["images_total"]
    assert counts["images_unreadable"] == clean["images_unreadable"] + 1
    assert counts["rejects_by_stage_reason"]["read/bad_quoting"] == 1
    assert_counts_add_up(metadata, tmp_path / "out")


def test_repeated_header_is_a_reject_not_a_row(clean_tree, clean_run, tmp_path):
    roots = fresh_tree(clean_tree, tmp_path)
    header = b",".join(name.encode() for name in mimic.CXR_METADATA.header)
    path = edit_table(roots.cxr, mimic.CXR_METADATA, edit_line(30, lambda line: header + b"\n" + line))
    metadata = run_job(roots, tmp_path / "out")
    counts, clean = metadata["counts"], clean_run[1]["counts"]
    assert read_rejects(tmp_path / "out", path) == [
        {"stage": "read", "reason": "repeated_header", "subject_id": None, "study_id": None, "dicom_id": None,
         "detail": f"{path}:30: the header line again"}]
    assert counts["lines_read"]["cxr_metadata"] == clean["lines_read"]["cxr_metadata"] + 1
    assert counts["rejects_total"] == clean["rejects_total"] + 1
    # Not a row: every image count is the clean run's.
    ignored = ("lines_read", "rejects_total", "rejects_by_stage_reason")
    assert without(counts, *ignored) == without(clean, *ignored)
    assert_counts_add_up(metadata, tmp_path / "out")


def test_nul_bytes_are_removed_and_counted(clean_tree, clean_run, tmp_path):
    roots = fresh_tree(clean_tree, tmp_path)
    line = quoted_line(gzip.decompress(table_path(roots.ed, mimic.TRIAGE).read_bytes()))
    # Two inside a quoted field, one after its closing quote (where the strict parser would refuse anything else).
    edit_table(roots.ed, mimic.TRIAGE, edit_line(line, lambda text: text.replace(b'"', b'"\0\0', 1) + b"\0"))
    metadata = run_job(roots, tmp_path / "out")
    counts, clean = metadata["counts"], clean_run[1]["counts"]
    assert counts["nul_bytes_removed"] == {"triage": 3}
    assert without(counts, "nul_bytes_removed") == without(clean, "nul_bytes_removed")  # the row is read as before
    assert_counts_add_up(metadata, tmp_path / "out")


def test_undecodable_bytes_are_counted_and_their_row_rejected(clean_tree, clean_run, tmp_path):
    roots = fresh_tree(clean_tree, tmp_path)
    path = edit_table(roots.ed, mimic.TRIAGE, edit_line(3, lambda line: line + b"\xff\xfe"))
    metadata = run_job(roots, tmp_path / "out")
    counts, clean = metadata["counts"], clean_run[1]["counts"]
    read = read_rejects(tmp_path / "out", path)
    assert [(r["reason"], r["detail"]) for r in read] == [
        ("undecodable_bytes", f"{path}:3: 2 byte(s) that are not UTF-8")]
    assert read[0]["subject_id"] == int(gzip.decompress(path.read_bytes()).split(b"\n")[2].split(b",")[0])
    assert counts["undecodable_bytes"] == {"triage": 2}
    assert counts["rows_read"]["triage"] == clean["rows_read"]["triage"]
    assert counts["rows_rejected"].get("triage", 0) == clean["rows_rejected"].get("triage", 0) + 1
    assert_counts_add_up(metadata, tmp_path / "out")


def test_header_only_required_table_fails_at_launch(clean_tree, tmp_path):
    roots = fresh_tree(clean_tree, tmp_path)
    path = edit_table(roots.ed, mimic.EDSTAYS, lambda data: data.split(b"\n", 1)[0] + b"\n")
    done = run_cli(roots, tmp_path / "out")
    assert done.returncode != 0
    assert f"error: {path}: edstays has a header but no data rows" in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_column_fails_at_launch(clean_tree, tmp_path):
    roots = fresh_tree(clean_tree, tmp_path)
    path = edit_table(roots.cxr, mimic.CXR_METADATA, lambda data: data.replace(b"ViewPosition", b"View", 1))
    done = run_cli(roots, tmp_path / "out")
    assert done.returncode != 0
    assert f"error: {path}: required column 'ViewPosition' of cxr_metadata is missing" in done.stderr


def test_repeated_column_fails_at_launch(clean_tree, tmp_path):
    """Once accepted: a row filter read the first copy of a column and the typed row the last."""
    roots = fresh_tree(clean_tree, tmp_path)
    path = edit_table(roots.ed, mimic.EDSTAYS, edit_line(1, lambda header: header + b",stay_id"))
    done = run_cli(roots, tmp_path / "out")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"error: {path}: column 'stay_id' appears 2 times in the header of edstays" in done.stderr


def test_truncated_gzip_fails_the_job_naming_the_file(clean_tree, tmp_path):
    roots = fresh_tree(clean_tree, tmp_path)
    path = table_path(roots.ed, mimic.VITALSIGN)
    path.write_bytes(path.read_bytes()[:-200])
    done = run_cli(roots, tmp_path / "out")
    assert done.returncode != 0
    # At launch here (the header check reads the small file's end); a large file's end fails the job as it is read
    # (test_csv_tables).
    assert (f"error: {path}: cannot be read (Compressed file ended before the end-of-stream marker was reached)"
            in done.stderr)


def test_damaged_deflate_data_fails_the_job_naming_the_file(clean_tree, tmp_path):
    """zlib's own error is no OSError: it once ended the job in a traceback naming no file."""
    roots = fresh_tree(clean_tree, tmp_path)
    path = table_path(roots.ed, mimic.VITALSIGN)
    path.write_bytes(damaged_deflate(path.read_bytes()))
    done = run_cli(roots, tmp_path / "out")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"error: {path}: cannot be read (Error -3 while decompressing data: " in done.stderr


def quote_names(header: bytes) -> bytes:
    return b",".join(b'"' + name + b'"' for name in header.split(b","))


def test_byte_order_mark_and_crlf_read_like_the_clean_tree(clean_tree, clean_run, tmp_path):
    """Before a quoted header (pandas' QUOTE_ALL, some Excel exports) the mark once made the quotes part of the first
    name: the job stopped on a "missing" subject_id."""
    roots = fresh_tree(clean_tree, tmp_path)
    for root, table, header in ((roots.cxr, mimic.CXR_METADATA, bytes), (roots.ed, mimic.EDSTAYS, quote_names),
                                (roots.ed, mimic.TRIAGE, quote_names)):
        edit_table(root, table, lambda data: b"\xef\xbb\xbf" + edit_line(1, header)(data).replace(b"\n", b"\r\n"))
    metadata = run_job(roots, tmp_path / "out")
    assert metadata["counts"] == clean_run[1]["counts"]
    assert_counts_add_up(metadata, tmp_path / "out")


def test_every_cohort_reports_nul_and_undecodable_bytes(clean_tree, tmp_path):
    """The cohorts built on the shared funnel (here cxr_ehr) report both in metadata.json, not only as counters."""
    roots = fresh_tree(clean_tree, tmp_path)
    edit_table(roots.iv, mimic.PATIENTS, edit_line(3, lambda line: line + b"\0"))
    edit_table(roots.iv, mimic.ADMISSIONS, edit_line(3, lambda line: line + b"\xff"))
    metadata = run(["--cohort=cxr_ehr", f"--mimic_cxr_root={roots.cxr}", f"--mimic_iv_root={roots.iv}",
                    f"--output={tmp_path / 'out'}", ONE_WORKER, "--images=false"])
    assert metadata["counts"]["nul_bytes_removed"] == {"patients": 1}
    assert metadata["counts"]["undecodable_bytes"] == {"admissions": 1}


BIG_ID = "99999999999999999999"  # 20 digits: beyond the int64 every id is written as


def test_a_stay_id_beyond_int64_is_a_read_reject_and_the_job_goes_on(clean_tree, clean_run, tmp_path):
    """Once accepted when read, linked to its subject's X-ray and then, after all the image work, the failure of the
    whole job in the TFRecord writer. Now each of its rows is a read reject (bad_int) and the subject's kept images
    are join/stay_row_rejected, as for any edstays row rejected when read."""
    written = manifest(clean_run[0])
    record = written[sorted(written)[0]]
    stay, subject = f",{record['stay_id']},".encode(), int(record["subject_id"])
    roots = fresh_tree(clean_tree, tmp_path)
    changed = {}
    for table in (mimic.EDSTAYS, mimic.TRIAGE, mimic.VITALSIGN, mimic.MEDRECON, mimic.PYXIS):
        changed[table.name] = read_table_bytes(roots.ed, table).count(stay)
        edit_table(roots.ed, table, lambda data: data.replace(stay, f",{BIG_ID},".encode()))
    assert changed["edstays"] == 1
    metadata = run_job(roots, tmp_path / "out")
    counts, clean = metadata["counts"], clean_run[1]["counts"]
    bad = [r for r in rejects(tmp_path / "out") if BIG_ID in r["detail"]]
    assert sorted((r["stage"], r["reason"], r["subject_id"], r["detail"].split(": ", 1)[1]) for r in bad) == sorted(
        ("read", "bad_int", subject, f"{table}.stay_id='{BIG_ID}'") for table, n in changed.items() for _ in range(n))
    assert counts["rejects_by_stage_reason"]["read/bad_int"] == (
        clean["rejects_by_stage_reason"].get("read/bad_int", 0) + sum(changed.values()))
    assert counts["rejected_by_reason"]["join/stay_row_rejected"] > clean["rejected_by_reason"].get(
        "join/stay_row_rejected", 0)
    assert subject not in {int(row["subject_id"]) for row in manifest(tmp_path / "out").values()}
    assert counts["images_total"] == clean["images_total"] and counts["matched"] < clean["matched"]
    assert_counts_add_up(metadata, tmp_path / "out")


@pytest.mark.parametrize("value", ["1e20", BIG_ID])
def test_a_metadata_study_id_beyond_int64_rejects_its_image_only(clean_tree, clean_run, tmp_path, value):
    """Read through float(), 1e20 once became the id 10**20 (and 2**53 + 1 its neighbour)."""
    written = manifest(clean_run[0])
    record = written[sorted(written)[1]]
    roots = fresh_tree(clean_tree, tmp_path)
    edit_table(roots.cxr, mimic.CXR_METADATA, lambda data: b"\n".join(
        line.replace(f",{record['study_id']},".encode(), f",{value},".encode()) if record["dicom_id"].encode() in line
        else line for line in data.split(b"\n")))
    metadata = run_job(roots, tmp_path / "out")
    counts, clean = metadata["counts"], clean_run[1]["counts"]
    assert [(r["stage"], r["reason"], r["detail"]) for r in rejects(tmp_path / "out")
            if r["dicom_id"] == record["dicom_id"]] == [("metadata", "bad_int", f"cxr_metadata.study_id='{value}'")]
    assert record["dicom_id"] not in manifest(tmp_path / "out")
    assert (counts["matched"], counts["rejected"]) == (clean["matched"] - 1, clean["rejected"] + 1)
    assert_counts_add_up(metadata, tmp_path / "out")


def test_a_chexpert_subject_id_beyond_int64_rejects_its_studys_images(clean_tree, clean_run, tmp_path):
    """Once a valid row of a subject no image has: the study's images were written as unlabelled (no_label_row).
    A subject_id beyond int64 is no id, so the reject line is tied to the study by its study_id."""
    written = manifest(clean_run[0])
    record = written[sorted(written)[2]]
    roots = fresh_tree(clean_tree, tmp_path)
    row = f"{record['subject_id']},{record['study_id']},".encode()
    edit_table(roots.cxr, mimic.CXR_CHEXPERT,
               lambda data: data.replace(row, f"{BIG_ID},{record['study_id']},".encode()))
    metadata = run_job(roots, tmp_path / "out")
    found = [(r["stage"], r["reason"], r["subject_id"], r["study_id"]) for r in rejects(tmp_path / "out")
             if r["study_id"] == int(record["study_id"])]
    assert ("read", "bad_int", None, int(record["study_id"])) in found
    assert ("join", "label_row_rejected", int(record["subject_id"]), int(record["study_id"])) in found
    assert record["study_id"] not in {row["study_id"] for row in manifest(tmp_path / "out").values()}
    assert_counts_add_up(metadata, tmp_path / "out")
