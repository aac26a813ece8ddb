"""Fault suite, conflicts (issue #12 item 2): stays that end before they begin, duplicate keys (identical or
conflicting), label cells that are not 1, 0, -1 or blank, rejected stay and label rows, bad timestamps.

Each test injects one fault into a fresh copy of the session's sample tree, on rows of subjects whose images the
clean run wrote, runs the job, and checks against the clean run exactly which images changed outcome (written,
no_ed_stay, or a reject reason), which counts changed, and that every count still adds up.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable

import pytest

import faults
from beam_pipeline import mimic, sample
from beam_pipeline.cohorts.ed_cxr import funnel as format_funnel
from conftest import published

WRITTEN, NO_STAY = ("written",), ("no_ed_stay",)
# Counts compared with the clean run: the funnel's image outcomes and rejected images by reason (as the funnel
# lists them), rejected rows, every reject, and the duplicate counters.
COMPARED = ("images_total", "images_unreadable", "images_other_view", "images_kept_view", "no_ed_stay",
            "dropped_after_ed_departure", "matched", "rejected", "rejects_total")
COMPARED_PREFIXES = ("rejected_by_reason/", "rejects_by_stage_reason/read/", "rows_rejected/", "duplicates/")


def table_rows(root: str, table: mimic.Table) -> list[dict]:
    return list(csv.DictReader(io.StringIO(faults.read_table_bytes(root, table).decode("utf-8"), newline="")))


def edit_rows(root: str, table: mimic.Table, edit: Callable[[list[dict]], list[dict]]) -> None:
    """Rewrite a table's rows as the sample writes them (minimal quoting, \\n endings)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=table.header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(edit(table_rows(root, table)))
    faults.write_table_bytes(root, table, text.getvalue().encode("utf-8"))


def change(rows: list[dict], pick: Callable[[dict], bool], **values) -> list[dict]:
    """The rows with ``values`` set in every row ``pick`` selects (there must be one)."""
    assert any(pick(row) for row in rows)
    return [{**row, **values} if pick(row) else row for row in rows]


def add_copy(rows: list[dict], pick: Callable[[dict], bool], **values) -> list[dict]:
    """The rows plus a copy of the first row ``pick`` selects, with ``values`` changed."""
    return rows + [{**next(row for row in rows if pick(row)), **values}]


def manifest(output: Path) -> list[dict]:
    return [row for path in sorted((published(output) / "manifest").glob("*.csv"))
            for row in csv.DictReader(path.open(newline=""))]


def outcomes(roots: sample.SampleRoots, output: Path) -> dict[str, tuple[str, ...]]:
    """Kept-view dicom_id -> the outcomes of its metadata rows: written, <stage>/<reason> or no_ed_stay."""
    kept = Counter(row["dicom_id"] for row in table_rows(roots.cxr, mimic.CXR_METADATA)
                   if row["ViewPosition"] in mimic.DEFAULT_VIEWS)
    results = defaultdict(list)
    for row in manifest(output):
        results[row["dicom_id"]].append("written")
    for reject in faults.rejects(output):
        if reject["dicom_id"]:
            results[reject["dicom_id"]].append(f"{reject['stage']}/{reject['reason']}")
    return {dicom: tuple(sorted(results[dicom] + ["no_ed_stay"] * (n - len(results[dicom]))))
            for dicom, n in kept.items()}


def flat(counts: dict, prefix: str = "") -> dict[str, int]:
    items = {}
    for key, value in counts.items():
        items.update(flat(value, f"{prefix}{key}/") if isinstance(value, dict) else {prefix + key: value})
    return items


@dataclasses.dataclass
class Clean:
    """The clean run and what the tests pick their targets from."""

    roots: sample.SampleRoots
    output: Path
    counts: dict
    outcomes: dict[str, tuple[str, ...]]
    manifest: list[dict]
    subject_of: dict[str, str]  # kept dicom_id -> subject_id

    def kept(self, subject: str) -> list[str]:
        return sorted(d for d, s in self.subject_of.items() if s == subject)

    def rows(self, table: mimic.Table) -> list[dict]:
        return table_rows(root_of(self.roots, table), table)

    def subjects(self, *, stays: int | None = None, allowed=(WRITTEN,), needed=(WRITTEN,)) -> list[str]:
        """Subjects (sorted) with that many edstays rows whose kept images all had an ``allowed`` outcome and
        at least one image of each ``needed`` outcome."""
        n_stays = Counter(row["subject_id"] for row in self.rows(mimic.EDSTAYS))
        found = []
        for subject in sorted(set(self.subject_of.values())):
            seen = {self.outcomes[d] for d in self.kept(subject)}
            if (stays is None or n_stays[subject] == stays) and seen <= set(allowed) and set(needed) <= seen:
                found.append(subject)
        assert found, "the sample tree has no subject for this fault"
        return found

    def written(self, **match) -> list[dict]:
        return [row for row in self.manifest if all(row[k] == v for k, v in match.items())]

    def record_with_rows(self, subjects: list[str], keys: dict[str, str]) -> dict:
        """The first written record of these subjects whose key (a manifest column) has a row in each table."""
        present = {table: {row[column] for row in self.rows(mimic.TABLES[table])} for table, column in keys.items()}
        return next(record for record in self.manifest if record["subject_id"] in subjects
                    and all(record[column] in present[table] for table, column in keys.items()))

    def changes(self, roots: sample.SampleRoots, output: Path) -> dict[str, tuple]:
        now = outcomes(roots, output)
        return {d: (self.outcomes.get(d), now.get(d)) for d in sorted(self.outcomes.keys() | now.keys())
                if self.outcomes.get(d) != now.get(d)}

    def delta(self, metadata: dict) -> dict[str, int]:
        before, after = flat(self.counts), flat(metadata["counts"])
        return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(before.keys() | after.keys())
                if (k in COMPARED or k.startswith(COMPARED_PREFIXES)) and after.get(k, 0) != before.get(k, 0)}


@pytest.fixture(scope="module")
def clean(clean_tree, clean_run):
    output, metadata = clean_run
    subject_of = {row["dicom_id"]: row["subject_id"] for row in table_rows(clean_tree.cxr, mimic.CXR_METADATA)
                  if row["ViewPosition"] in mimic.DEFAULT_VIEWS}
    return Clean(clean_tree, output, metadata["counts"], outcomes(clean_tree, output), manifest(output), subject_of)


def run(roots: sample.SampleRoots, tmp_path: Path) -> tuple[Path, dict]:
    output = tmp_path / "out"
    metadata = faults.run_job(roots, output)
    faults.assert_counts_add_up(metadata, output)
    return output, metadata


def root_of(roots: sample.SampleRoots, table: mimic.Table) -> str:
    return {"ed": roots.ed, "iv": roots.iv, "cxr": roots.cxr}[table.module]


def rejected_as(reason: str, dicoms) -> dict[str, tuple]:
    return {d: (WRITTEN, (reason,)) for d in dicoms}


def test_outtime_before_intime_rejects_the_stay_row_and_its_images_are_not_no_ed_stay(clean, clean_tree, tmp_path):
    """The subject's only stay ends an hour before it begins: the row is a read reject, and every kept image of the
    subject (written or no_ed_stay before) is stay_row_rejected: none is reported as having no ED stay."""
    subject = clean.subjects(stays=1, allowed=(WRITTEN, NO_STAY), needed=(WRITTEN, NO_STAY))[0]
    stay = next(row for row in clean.rows(mimic.EDSTAYS) if row["subject_id"] == subject)
    outtime = mimic.parse_datetime(stay["intime"]) - dt.timedelta(hours=1)
    roots = faults.fresh_tree(clean_tree, tmp_path)
    edit_rows(roots.ed, mimic.EDSTAYS, lambda rows: change(rows, lambda r: r["stay_id"] == stay["stay_id"],
                                                            outtime=mimic.format_datetime(outtime)))
    output, metadata = run(roots, tmp_path)

    kept = clean.kept(subject)
    written = [d for d in kept if clean.outcomes[d] == WRITTEN]
    assert clean.changes(roots, output) == {d: (clean.outcomes[d], ("join/stay_row_rejected",)) for d in kept}
    assert clean.delta(metadata) == {
        "matched": -len(written), "no_ed_stay": -(len(kept) - len(written)), "rejected": len(kept),
        "rejected_by_reason/join/stay_row_rejected": len(kept),
        "rejects_by_stage_reason/read/outtime_before_intime": 1, "rejects_total": len(kept) + 1,
        "rows_rejected/edstays": 1}
    read = [r for r in faults.rejects(output) if r["reason"] == "outtime_before_intime"]
    assert [(r["stage"], r["subject_id"]) for r in read] == [("read", int(subject))]
    assert read[0]["detail"].endswith(f"edstays.outtime={outtime} < intime={stay['intime']}")
    funnel = format_funnel(metadata["counts"], metadata["config"]).splitlines()
    assert ["join/stay_row_rejected", str(len(kept))] in [line.split() for line in funnel]


def test_identical_duplicate_rows_are_one_row_and_change_nothing(clean, clean_tree, tmp_path):
    """An exact copy of a row in each table with one row per key: counted per table; the manifest and the
    TFRecords are byte-identical to the clean run's."""
    keys = {"edstays": "stay_id", "triage": "stay_id", "patients": "subject_id", "cxr_chexpert": "study_id",
            "cxr_split": "dicom_id"}
    record = clean.record_with_rows(clean.subjects(), keys)
    roots = faults.fresh_tree(clean_tree, tmp_path)
    for name, column in keys.items():
        table = mimic.TABLES[name]
        edit_rows(root_of(roots, table), table, lambda rows: add_copy(rows, lambda r: r[column] == record[column]))
    output, metadata = run(roots, tmp_path)

    assert clean.changes(roots, output) == {}
    assert clean.delta(metadata) == {f"duplicates/identical_rows/{name}": 1 for name in keys}
    clean_folder, folder = published(clean.output), published(output)
    files = sorted(p.relative_to(clean_folder) for p in clean_folder.glob("[mt]*/*") if p.suffix != ".json")
    assert files and all((folder / f).read_bytes() == (clean_folder / f).read_bytes() for f in files)


def test_a_dicom_id_under_two_subjects_is_rejected_for_both_and_the_job_goes_on(clean, clean_tree, tmp_path):
    """A written image's metadata row copied under another subject, at the time of one of that subject's written
    images (so it links too): which subject is right cannot be known, so both rows are rejected
    (metadata/dicom_id_of_several_subjects). Before, the official split file (whose row names the first subject)
    happened to reject the copy and the first was written; with a hash split both were, and the record-key check
    stopped the job."""
    record = clean.written()[0]
    other_record = next(r for r in clean.written() if r["subject_id"] != record["subject_id"])
    other = other_record["subject_id"]
    [when] = [{c: r[c] for c in ("StudyDate", "StudyTime")} for r in clean.rows(mimic.CXR_METADATA)
              if r["dicom_id"] == other_record["dicom_id"]]
    roots = faults.fresh_tree(clean_tree, tmp_path)
    edit_rows(roots.cxr, mimic.CXR_METADATA,
              lambda rows: add_copy(rows, lambda r: r["dicom_id"] == record["dicom_id"], subject_id=other, **when))
    output, metadata = run(roots, tmp_path)

    reason = "metadata/dicom_id_of_several_subjects"
    assert clean.changes(roots, output) == {record["dicom_id"]: (WRITTEN, (reason, reason))}
    assert clean.delta(metadata) == {"images_total": 1, "images_kept_view": 1, "matched": -1, "rejected": 2,
                                     f"rejected_by_reason/{reason}": 2, "rejects_total": 2}
    details = {r["detail"] for r in faults.rejects(output) if r["reason"] == reason.split("/")[1]}
    subjects = ",".join(sorted([record["subject_id"], other], key=int))
    assert details == {f"dicom_id={record['dicom_id']} under subject_ids {subjects}"}
    hashed = faults.run_job(roots, tmp_path / "hash", "--split_strategy=hash")
    assert hashed["counts"]["rejected_by_reason"][reason] == 2


CONFLICTS = {  # table -> (key column, also in the manifest; column changed in the copy)
    "edstays": ("stay_id", "intime"),
    "triage": ("stay_id", "acuity"),
    "patients": ("subject_id", "anchor_age"),
    "cxr_chexpert": ("study_id", "Edema"),
    "cxr_split": ("dicom_id", "split"),
}


def _conflicting(table: str, row: dict) -> str:
    """A value for the changed column that is valid on its own and differs from the row's once typed."""
    column = CONFLICTS[table][1]
    value = row[column]

    def number_other_than(*choices: str) -> str:
        return next(c for c in choices if value == "" or float(value) != float(c))

    return {"intime": lambda: mimic.format_datetime(mimic.parse_datetime(value) + dt.timedelta(hours=1)),
            "acuity": lambda: number_other_than("1", "2"),
            "anchor_age": lambda: str(int(value) + 1),
            "Edema": lambda: number_other_than("1", "0"),
            "split": lambda: "test" if value != "test" else "train"}[column]()


@pytest.mark.parametrize("table_name", list(CONFLICTS))
def test_conflicting_duplicate_rows_reject_the_images_that_use_them(clean, clean_tree, tmp_path, table_name):
    """A second row for a key with another value: the key is counted and never used; the images that would use
    it are rejected as conflicting_<table> (the stay: one with a second intime an hour later, of a subject with no
    other stay, so every version the X-rays could take is that stay); every other image keeps its outcome."""
    table = mimic.TABLES[table_name]
    key, column = CONFLICTS[table_name]
    record = clean.record_with_rows(clean.subjects(stays=1 if table is mimic.EDSTAYS else None), {table_name: key})
    original = next(row for row in clean.rows(table) if row[key] == record[key])
    roots = faults.fresh_tree(clean_tree, tmp_path)
    edit_rows(root_of(roots, table), table, lambda rows: add_copy(rows, lambda r: r[key] == original[key],
                                                                  **{column: _conflicting(table_name, original)}))
    output, metadata = run(roots, tmp_path)

    victims = [row["dicom_id"] for row in clean.written(**{key: record[key]})]
    reason = f"conflicting_{table_name}"
    assert clean.changes(roots, output) == rejected_as(f"join/{reason}", victims)
    assert clean.delta(metadata) == {
        "matched": -len(victims), "rejected": len(victims), f"rejected_by_reason/join/{reason}": len(victims),
        "rejects_total": len(victims), f"duplicates/conflicting_keys/{table_name}": 1}
    details = {r["detail"] for r in faults.rejects(output) if r["reason"] == reason}
    assert details == {f"{table_name} {key}={original[key]}: 2 rows differ in {column}"}


def test_label_values_other_than_1_0_minus_1_or_blank_reject_the_image_never_unlabelled(clean, clean_tree,
                                                                                       tmp_path):
    """A non-numeric cell and a 2 each reject their CheXpert row at read (bad_label_value) and the images of its
    study at the join (label_row_rejected); a row whose study_id cannot be read (bad_int) rejects the images of
    its subject's studies that have no other label row; a row whose subject_id is blank rejects the images of its
    study (tied through the metadata's study_id). None of them is written as unlabelled."""
    labelled = {row["study_id"] for row in clean.rows(mimic.CXR_CHEXPERT)}
    studies = sorted({row["study_id"] for row in clean.manifest if row["study_id"] in labelled
                      and row["subject_id"] in clean.subjects()})
    text_study, two_study, unreadable_study, no_subject_study = studies[:4]
    roots = faults.fresh_tree(clean_tree, tmp_path)

    def damage(rows):
        rows = change(rows, lambda r: r["study_id"] == text_study, Edema="positive")
        rows = change(rows, lambda r: r["study_id"] == two_study, Pneumonia="2")
        rows = change(rows, lambda r: r["study_id"] == no_subject_study, subject_id="")
        return change(rows, lambda r: r["study_id"] == unreadable_study, study_id=f"{unreadable_study}x")

    edit_rows(roots.cxr, mimic.CXR_CHEXPERT, damage)
    output, metadata = run(roots, tmp_path)

    unlabelled = {row["study_id"] for row in clean.manifest if row["study_id"] not in labelled}
    unreadable_subject = clean.written(study_id=unreadable_study)[0]["subject_id"]
    victims = [row["dicom_id"] for row in clean.manifest if row["study_id"] in (text_study, two_study, no_subject_study)
               or row["subject_id"] == unreadable_subject and row["study_id"] in unlabelled | {unreadable_study}]
    assert clean.changes(roots, output) == rejected_as("join/label_row_rejected", victims)
    assert clean.delta(metadata) == {
        "matched": -len(victims), "rejected": len(victims),
        "rejected_by_reason/join/label_row_rejected": len(victims),
        "rejects_by_stage_reason/read/bad_label_value": 2, "rejects_by_stage_reason/read/bad_int": 1,
        "rejects_by_stage_reason/read/missing_value": 1, "rejects_total": len(victims) + 4,
        "rows_rejected/cxr_chexpert": 4}
    read = sorted(r["detail"].split(": ", 1)[1] for r in faults.rejects(output) if r["stage"] == "read"
                  and r["detail"].startswith(str(faults.table_path(roots.cxr, mimic.CXR_CHEXPERT))))
    assert read == sorted(["cxr_chexpert.Edema='positive'", "cxr_chexpert.Pneumonia='2'",
                           f"cxr_chexpert.study_id='{unreadable_study}x'", "cxr_chexpert.subject_id is empty"])


def test_bad_timestamps_are_rejects_and_images_of_a_bad_stay_row_are_not_no_ed_stay(clean, clean_tree, tmp_path):
    """An impossible edstays intime rejects the row at read (bad_timestamp) and the subject's images
    (stay_row_rejected); an impossible StudyTime rejects that image when it is typed (bad_study_time)."""
    stay_subject, time_subject = clean.subjects(stays=1)[:2]
    stay = next(row for row in clean.rows(mimic.EDSTAYS) if row["subject_id"] == stay_subject)
    image = clean.written(subject_id=time_subject)[0]["dicom_id"]
    roots = faults.fresh_tree(clean_tree, tmp_path)
    hour_25 = stay["intime"][:11] + "25" + stay["intime"][13:]
    edit_rows(roots.ed, mimic.EDSTAYS, lambda rows: change(rows, lambda r: r["stay_id"] == stay["stay_id"],
                                                            intime=hour_25))
    edit_rows(roots.cxr, mimic.CXR_METADATA, lambda rows: change(rows, lambda r: r["dicom_id"] == image,
                                                                  StudyTime="256000.0"))
    output, metadata = run(roots, tmp_path)

    stay_images = clean.kept(stay_subject)
    assert clean.changes(roots, output) == {**rejected_as("join/stay_row_rejected", stay_images),
                                            **rejected_as("metadata/bad_study_time", [image])}
    n = len(stay_images) + 1
    assert clean.delta(metadata) == {
        "matched": -n, "rejected": n, "rejected_by_reason/join/stay_row_rejected": n - 1,
        "rejected_by_reason/metadata/bad_study_time": 1, "rejects_by_stage_reason/read/bad_timestamp": 1,
        "rejects_total": n + 1, "rows_rejected/edstays": 1}


def test_rows_a_record_would_hold_rejected_at_read_reject_its_images(clean, clean_tree, tmp_path):
    """A reject line holds ids, not the row: an image of a subject whose patients row was rejected, or taken after
    arrival while a triage or vitalsign row of its subject was rejected, is rejected (<table>_row_rejected) instead
    of being written without age, triage or that vital sign; images before arrival do not use those rows."""
    with_rows = [{row["subject_id"] for row in clean.rows(table)} for table in (mimic.TRIAGE, mimic.VITALSIGN)]
    candidates = [s for s in clean.subjects() if all(s in subjects for subjects in with_rows)]
    patient, triaged, measured = candidates[:3]
    roots = faults.fresh_tree(clean_tree, tmp_path)
    edit_rows(roots.iv, mimic.PATIENTS, lambda rows: change(rows, lambda r: r["subject_id"] == patient,
                                                             anchor_age="4O"))
    triage_row = next(r for r in clean.rows(mimic.TRIAGE) if r["subject_id"] == triaged)
    edit_rows(roots.ed, mimic.TRIAGE, lambda rows: change(rows, lambda r: r == triage_row, stay_id="x"))
    vital = next(r for r in clean.rows(mimic.VITALSIGN) if r["subject_id"] == measured)
    edit_rows(roots.ed, mimic.VITALSIGN, lambda rows: change(rows, lambda r: r == vital, charttime="2150-13-40"))
    output, metadata = run(roots, tmp_path)

    def after_arrival(subject):
        return [r["dicom_id"] for r in clean.written(subject_id=subject) if float(r["hours_from_arrival"]) >= 0]

    victims = {"patient": clean.kept(patient), "triage": after_arrival(triaged), "vitalsign": after_arrival(measured)}
    assert all(victims.values())
    assert clean.changes(roots, output) == {
        d: (WRITTEN, (f"join/{name}_row_rejected",)) for name, dicoms in victims.items() for d in dicoms}
    n = sum(map(len, victims.values()))
    assert clean.delta(metadata) == {
        "matched": -n, "rejected": n, "rejects_total": n + 3, "rows_rejected/patients": 1, "rows_rejected/triage": 1,
        "rows_rejected/vitalsign": 1, "rejects_by_stage_reason/read/bad_int": 2,
        "rejects_by_stage_reason/read/bad_timestamp": 1,
        **{f"rejected_by_reason/join/{name}_row_rejected": len(dicoms) for name, dicoms in victims.items()}}
