"""--cohort=cxr_ehr end to end on the generated sample tree: every kept image's EHR variables against a brute-force
reading of cohort-definitions.md §C over the raw files (time-granular matching, ties to the latest start), outcomes
only when asked for and never among the features, the original's feature CSVs, byte-identical reruns; bad rows
(conflicting, rejected at read, blank dischtime or hospital_expire_flag) reject the image, never a next-best value."""

from __future__ import annotations

import datetime as dt
import filecmp
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from beam_pipeline import mimic, sample
from beam_pipeline.cohorts import cxr_ehr_features as ehr
from beam_pipeline.cohorts.cxr_ehr import DescribeImages
from beam_pipeline.run import run
from cohort_files import examples, read_csv, table_rows, write_table
from conftest import ONE_WORKER, published
from test_medfuse_stays import HOUR, SUBJECT, T0, icustay, image, patient, typed

SETS = ("socio-norm", "image_meta", "all-age-norm")


def admission(hadm_id, admittime, dischtime, flag=0) -> dict:
    """An admissions row as read (blank dischtime / flag: None), with a known outcome unless told."""
    return typed(mimic.ADMISSIONS, subject_id=SUBJECT, hadm_id=hadm_id, admittime=admittime, dischtime=dischtime,
                 hospital_expire_flag=flag)


def adds_up(c: dict) -> bool:
    """Every image of a kept view is dropped, rejected or matched (the funnel's identity)."""
    return c["images_kept_view"] == sum(c["dropped"].values()) + c["rejected"] + c["matched"] > 0


def ehr_argv(roots: sample.SampleRoots, output: Path, *flags: str) -> list[str]:
    return ["--cohort=cxr_ehr", f"--mimic_cxr_root={roots.cxr}", f"--mimic_iv_root={roots.iv}", f"--output={output}",
            "--image_size=32", *flags]


@pytest.fixture(scope="session")
def ehr_tree(tmp_path_factory):
    return sample.generate(tmp_path_factory.mktemp("cxr-ehr") / "sample", subjects=120, seed=5)


@pytest.fixture(scope="session")
def ehr_run(ehr_tree, tmp_path_factory):
    """The README's command (with outcomes and three feature sets) in a fresh interpreter: (run folder, metadata)."""
    output = tmp_path_factory.mktemp("cxr-ehr-out") / "out"
    done = subprocess.run([sys.executable, "-m", "beam_pipeline.run", *ehr_argv(
        ehr_tree, output, f"--feature_sets={','.join(SETS)}", "--include_outcomes")],
        capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    folder = published(output)
    return folder, json.loads((folder / "metadata.json").read_text())


def _time(text: str) -> dt.datetime | None:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S") if text else None


def expected(roots: sample.SampleRoots) -> dict[str, dict]:
    """dicom_id -> the variables §C defines, read literally (time granularity; latest start wins a tie)."""
    patients = {r["subject_id"]: r for r in table_rows(roots.iv, mimic.PATIENTS)}
    admissions, stays = defaultdict(list), defaultdict(list)
    for r in table_rows(roots.iv, mimic.ADMISSIONS):
        admissions[r["subject_id"]].append((_time(r["admittime"]), _time(r["dischtime"]), int(r["hadm_id"]),
                                            r["hospital_expire_flag"]))
    for r in table_rows(roots.iv, mimic.ICUSTAYS):
        stays[r["subject_id"]].append((_time(r["intime"]), _time(r["outtime"]), int(r["stay_id"])))
    out = {}
    for r in table_rows(roots.cxr, mimic.CXR_METADATA):
        try:
            t = mimic.parse_study_datetime(r["StudyDate"], r["StudyTime"])
        except ValueError:
            continue
        p = patients.get(r["subject_id"])
        if p is None or p["gender"] not in ("M", "F"):
            continue
        age = min(int(p["anchor_age"]) + t.year - int(p["anchor_year"]), 91) if int(p["anchor_age"]) < 91 else 91
        inside = sorted((a for a in admissions[r["subject_id"]] if a[1] and a[0] <= t <= a[1]),
                        key=lambda a: (a[0], a[2]))
        in_icu = sorted((s for s in stays[r["subject_id"]] if s[0] <= t <= s[1]), key=lambda s: (s[0], s[2]))
        view = r["ViewPosition"] if r["ViewPosition"] in ("PA", "LATERAL", "AP", "LL") else "missing"
        orientation = r["PatientOrientationCodeSequence_CodeMeaning"]
        out[r["dicom_id"]] = {
            "gender": p["gender"], "age": str(age), "view": view,
            "orientation": orientation if orientation in ("Erect", "Recumbent") else "missing",
            "in_admission": str(inside[-1][2]) if inside else "", "in_icu": str(in_icu[-1][2]) if in_icu else "",
            "outcome_hospital_expire_flag": inside[-1][3] if inside else "",
            "outcome_icu_los_days": repr((in_icu[-1][1] - in_icu[-1][0]) / dt.timedelta(days=1)) if in_icu else ""}
    return out


def test_every_image_has_the_variables_of_its_time(ehr_tree, ehr_run):
    folder, metadata = ehr_run
    want = expected(ehr_tree)
    rows = {r["dicom_id"]: r for p in sorted((folder / "manifest").glob("*.csv")) for r in read_csv(p)}
    rejects = [json.loads(line) for p in (folder / "rejects").glob("*.jsonl") for line in p.open()]
    rejected = {r["dicom_id"] for r in rejects if r["stage"] in ("images", "join", "split")
                and r["reason"] != "duplicate_dicom_id"}  # a repeated row is rejected, its first copy written
    assert set(rows) == set(want) - rejected
    for dicom_id, row in rows.items():
        for column, value in want[dicom_id].items():
            assert row[column] == value, (dicom_id, column)
    assert adds_up(metadata["counts"])
    assert any(row["in_icu"] for row in rows.values()) and any(row["view"] == "missing" for row in rows.values())


def test_outcomes_only_when_asked_and_never_among_features(ehr_tree, ehr_run, tmp_path):
    folder, metadata = ehr_run
    assert not set(metadata["feature_columns"]) & {"alive", "died"}
    assert metadata["outcomes"] == list(ehr.OUTCOMES)
    example = next(iter(examples(folder, "dicom_id").values()))  # keyed by bytes: any one record will do
    assert len(example["ehr/features"]) == len(ehr.FEATURE_COLUMNS) and "outcome/hospital_expire_flag" in example
    plain = run(ehr_argv(ehr_tree, tmp_path / "plain", ONE_WORKER, "--images=false"))
    assert plain["outcomes"] is None and not any(k.startswith("outcome") for k in plain["features"])
    header = (published(tmp_path / "plain") / "manifest").glob("*.csv")
    assert not any("outcome" in read_csv(p)[0] for p in header)
    with pytest.raises(SystemExit):  # a set with alive/died needs --include_outcomes
        run(ehr_argv(ehr_tree, tmp_path / "refused", "--feature_sets=clinical"))


def test_feature_csvs_follow_the_original_layout(ehr_run):
    folder, metadata = ehr_run
    rows = {r["dicom_id"]: r for p in sorted((folder / "manifest").glob("*.csv")) for r in read_csv(p)}
    for name in SETS:
        [path] = (folder / "features").glob(f"{name}-*.csv")
        lines = read_csv(path)
        assert list(lines[0]) == ["path", *metadata["feature_sets"][name]]
        assert len(lines) == metadata["counts"]["matched"]
        assert {line["path"] for line in lines} == {mimic.image_path(int(r["subject_id"]), int(r["study_id"]), d)
                                                    for d, r in rows.items()}
    assert len(metadata["feature_sets"]["all-age-norm"]) == 13


def test_rerun_is_byte_identical_with_one_worker(ehr_tree, ehr_run, tmp_path):
    folder, metadata = ehr_run
    again = run(ehr_argv(ehr_tree, tmp_path / "again", ONE_WORKER, f"--feature_sets={','.join(SETS)}",
                         "--include_outcomes"))
    other = published(tmp_path / "again")
    for sub in ("tfrecords", "manifest", "features", "rejects"):
        names = sorted(p.name for p in (folder / sub).iterdir())
        assert names == sorted(p.name for p in (other / sub).iterdir())
        assert filecmp.cmpfiles(folder / sub, other / sub, names, shallow=False)[0] == names, sub
    strip = lambda m: {**m, "config": {**m["config"], "output": ""}}  # noqa: E731
    assert strip(again) == strip(metadata)


@pytest.mark.parametrize("table", ["admissions", "icustays"])
def test_an_image_in_an_admission_or_icu_stay_whose_rows_differ_is_rejected(table):
    """The match is chosen among every version of the rows, then rejected when its key conflicts: never written as
    in no admission (or ICU stay) with the next-best match's variables."""
    groups = {"images": [image("d1", T0 + 2 * HOUR)], "patients": [patient()],
              "admissions": [admission(7, T0, T0 + 50 * HOUR)], "icustays": [icustay(9, 7, T0, T0 + 30 * HOUR)]}
    groups[table].append(admission(7, T0, T0 + 60 * HOUR) if table == "admissions"
                         else icustay(9, 7, T0, T0 + 30 * HOUR, last="SICU"))
    out = list(DescribeImages("time", include_outcomes=True).process((SUBJECT, groups)))
    rejects = [o.value for o in out if getattr(o, "tag", None) == "rejects"]
    assert [(r["stage"], r["reason"], r["dicom_id"]) for r in rejects] == [("join", f"conflicting_{table}", "d1")]
    assert not [o for o in out if not hasattr(o, "tag")]  # no record written


def read_reject(reason: str = "bad_timestamp", subject_id: int = SUBJECT) -> dict:
    """A reject line of ReadCsvRows: ids only, never the row's values."""
    return {"stage": "read", "reason": reason, "subject_id": subject_id, "study_id": None, "dicom_id": None,
            "detail": "table.csv:3: a bad value"}


def describe(groups: dict, include_outcomes: bool = True,
             granularity: str = "time") -> tuple[list, list[dict], list[str]]:
    out = list(DescribeImages(granularity, include_outcomes).process((SUBJECT, groups)))
    return ([o for o in out if not hasattr(o, "tag")], [o.value for o in out if getattr(o, "tag", None) == "rejects"],
            [o.value[0] for o in out if getattr(o, "tag", None) == "events"])


@pytest.mark.parametrize("table, reason", [("admissions", "admission_row_rejected"),
                                           ("icustays", "icustay_row_rejected")])
def test_an_image_in_no_valid_row_while_a_row_of_its_subject_was_rejected_at_read_is_rejected(table, reason):
    """The damaged row (e.g. an outtime without seconds) may be the one the image falls in: never written as in no
    admission / ICU stay (icu=0, outcomes blank); a valid row that contains the image still wins."""
    groups = {"images": [image("d1", T0 + 2 * HOUR)], "patients": [patient()],
              "admissions": [admission(7, T0, T0 + 50 * HOUR)], "icustays": [icustay(9, 7, T0, T0 + 30 * HOUR)],
              f"rejected_{table}": [read_reject()]}
    contained = dict(groups)
    records, rejects, _ = describe(contained)
    assert not rejects and [(r.features["in_admission"], r.features["in_icu"]) for r in records] == [(7, 9)]
    groups[table] = []  # the row it falls in is the rejected one
    records, rejects, _ = describe(groups)
    assert not records
    assert [(r["stage"], r["reason"], r["dicom_id"]) for r in rejects] == [("join", reason, "d1")]
    assert "bad_timestamp" in rejects[0]["detail"]


def test_a_rejected_patients_row_rejects_the_image_instead_of_no_patient():
    groups = {"images": [image("d1", T0)], "rejected_patients": [read_reject("bad_int")]}
    records, rejects, events = describe(groups)
    assert not records and "dropped/no_patient" not in events
    assert [(r["stage"], r["reason"], r["dicom_id"]) for r in rejects] == [("join", "patient_row_rejected", "d1")]
    records, rejects, _ = describe({**groups, "patients": [patient()]})  # which version is right cannot be known
    assert not records and [r["reason"] for r in rejects] == ["patient_row_rejected"]
    records, rejects, events = describe({"images": [image("d1", T0)]})
    assert not records and not rejects and "dropped/no_patient" in events


def test_a_dicom_id_whose_metadata_rows_differ_is_rejected_whichever_row_comes_first():
    """A PA and a LATERAL row of one dicom_id at one time: the view feature would follow input order; both rows are
    rejected. Exact copies: one image described, the copy duplicate_dicom_id."""
    versions = [image("d1", T0 + 2 * HOUR, view="PA"), image("d1", T0 + 2 * HOUR, view="LATERAL")]
    for order in (versions, versions[::-1]):
        records, rejects, _ = describe({"images": [*order, image("d2", T0), image("d2", T0)],
                                        "patients": [patient()]})
        assert [r.dicom_id for r in records] == ["d2"]
        assert [(r["dicom_id"], r["reason"]) for r in rejects] == [
            ("d1", "conflicting_cxr_metadata"), ("d1", "conflicting_cxr_metadata"), ("d2", "duplicate_dicom_id")]


CLEAN = {"anchor_year": "2150", "dischtime": "2150-03-05 12:00:00", "hospital_expire_flag": "1",
         "outtime": "2150-03-03 07:00:00"}
FIRST = 10000001


def hand_made(root: Path, **per_subject: tuple[str, ...]) -> list[str]:
    """A tree with one AP image per subject (FIRST, FIRST + 1, ...) on 2150-03-01 10:00, inside an admission (from
    06:00) and an ICU stay (from 07:00); ``per_subject``: a column's text for each subject, else CLEAN's. Returns the
    run's flags but --output (no images, hash split, one worker)."""
    iv, cxr = root / "iv", root / "cxr"
    n = len(next(iter(per_subject.values())))
    subjects = [(i, FIRST + i - 1, {c: per_subject.get(c, (v,) * n)[i - 1] for c, v in CLEAN.items()})
                for i in range(1, n + 1)]
    write_table(cxr / "mimic-cxr-2.0.0-metadata.csv", mimic.CXR_METADATA, [
        dict(dicom_id=f"d{i}", subject_id=s, study_id=50000000 + i, ViewPosition="AP", StudyDate="21500301",
             StudyTime="100000.000") for i, s, _ in subjects])
    write_table(iv / "hosp" / "patients.csv", mimic.PATIENTS, [
        dict(subject_id=s, gender="F", anchor_age=60, anchor_year=v["anchor_year"]) for _, s, v in subjects])
    write_table(iv / "hosp" / "admissions.csv", mimic.ADMISSIONS, [
        dict(subject_id=s, hadm_id=20000000 + i, admittime="2150-03-01 06:00:00", dischtime=v["dischtime"],
             hospital_expire_flag=v["hospital_expire_flag"]) for i, s, v in subjects])
    write_table(iv / "icu" / "icustays.csv", mimic.ICUSTAYS, [
        dict(subject_id=s, hadm_id=20000000 + i, stay_id=30000000 + i, first_careunit="MICU", last_careunit="MICU",
             intime="2150-03-01 07:00:00", outtime=v["outtime"], los=2) for i, s, v in subjects])
    return ["--cohort=cxr_ehr", f"--mimic_cxr_root={cxr}", f"--mimic_iv_root={iv}", "--images=false",
            "--split_strategy=hash", ONE_WORKER]


def test_read_rejects_reach_the_join_and_the_funnel_adds_up(tmp_path):
    """End to end: subject 2's dischtime and outtime lack seconds, subject 3's anchor_year is damaged (all
    rejected at read); subject 1 is clean."""
    metadata = run([*hand_made(tmp_path, dischtime=("2150-03-05 12:00:00", "2150-03-05 12:00", "2150-03-05 12:00:00"),
                               outtime=("2150-03-03 07:00:00", "2150-03-03 07:00", "2150-03-03 07:00:00"),
                               anchor_year=("2150", "2150", "2l50")), f"--output={tmp_path / 'out'}"])
    c = metadata["counts"]
    assert (c["matched"], c["rejected"], c["dropped"]["no_patient"]) == (1, 2, 0)
    assert c["rejected_by_reason"] == {"join/admission_row_rejected": 1, "join/patient_row_rejected": 1}
    assert adds_up(c)


def test_an_unknown_outcome_is_rejected_only_when_outcomes_are_written():
    """A blank hospital_expire_flag (nullable in MIMIC) of the image's admission: with outcomes the image is
    rejected, never written alive=1 like a known survivor (nor -1 / blank like an image in no admission); without
    them the flag is not used and the image is written in that admission. An image in no admission keeps the
    original's reading (no outcome: blank, -1, alive)."""
    groups = {"images": [image("d1", T0 + 2 * HOUR), image("d2", T0 + 99 * HOUR)], "patients": [patient()],
              "admissions": [admission(7, T0, T0 + 50 * HOUR, flag=None)]}
    records, rejects, _ = describe(groups)
    assert [(r["stage"], r["reason"], r["dicom_id"]) for r in rejects] == [("join", "unknown_outcome", "d1")]
    assert "hadm_id=7" in rejects[0]["detail"] and "blank" in rejects[0]["detail"]
    assert [(r.dicom_id, r.outcomes["outcome_hospital_expire_flag"]) for r in records] == [("d2", None)]
    records, rejects, _ = describe(groups, include_outcomes=False)
    assert not rejects and [(r.dicom_id, r.features["in_admission"], r.outcomes) for r in records] == [
        ("d1", 7, None), ("d2", None, None)]


OPEN, LATER = admission(7, T0, None), admission(8, T0 + 10 * HOUR, T0 + 20 * HOUR)


@pytest.mark.parametrize("include_outcomes", [True, False])
@pytest.mark.parametrize("hours, admissions, extra, want", [
    (2, [OPEN], {}, "admission_end_unknown"),  # the open admission may hold the image
    (-1, [OPEN], {}, None),  # begun after the image: it is in no admission
    (99, [OPEN, LATER], {}, "admission_end_unknown"),  # the complete one ended; the open one may still run
    (15, [OPEN, LATER], {}, 8),  # the complete one holds it and began later: it wins whatever the open one's end
    (15, [admission(9, T0 + 12 * HOUR, None), LATER], {}, "admission_end_unknown"),  # the open one began later
    (2, [OPEN], {"rejected_admissions": [read_reject()]}, "admission_end_unknown"),
    (-1, [OPEN], {"rejected_admissions": [read_reject()]}, "admission_row_rejected"),
    (2, [OPEN, {**OPEN, "dischtime": T0 + 5 * HOUR}], {}, "conflicting_admissions")])
def test_an_admission_without_dischtime_makes_the_images_it_may_hold_rejects(hours, admissions, extra, want,
                                                                              include_outcomes):
    """A blank dischtime (nullable in MIMIC) used to make the admission hold nothing, so its images were written as
    in no admission. Now it competes from its admittime on under the usual tie rule (latest start, then largest id):
    chosen, the image is rejected (its admission, a feature, is unknown); a complete admission that outranks it
    still wins."""
    records, rejects, _ = describe({"images": [image("d1", T0 + hours * HOUR)], "patients": [patient()],
                                    "admissions": admissions, **extra}, include_outcomes)
    if isinstance(want, str):
        assert not records and [(r["stage"], r["reason"]) for r in rejects] == [("join", want)]
    else:
        assert not rejects and [r.features["in_admission"] for r in records] == [want]


def test_an_open_admission_at_date_granularity_holds_its_whole_first_day():
    """--ehr_match=date: an open admission begun at 08:00 may hold an image taken at 01:00 that day."""
    groups = {"images": [image("d1", T0 - 7 * HOUR)], "patients": [patient()], "admissions": [OPEN]}
    assert [r.features["in_admission"] for r in describe(groups)[0]] == [None]
    assert [r["reason"] for r in describe(groups, granularity="date")[1]] == ["admission_end_unknown"]


def test_blank_outcome_and_dischtime_end_to_end(tmp_path):
    """Subject 2's admission has a blank hospital_expire_flag, subject 3's a blank dischtime; subject 1 is clean.
    With outcomes and an alive/died feature set, both are rejects and every count adds up; without outcomes
    subject 2's image is written in its admission."""
    flags = hand_made(tmp_path, hospital_expire_flag=("0", "", "0"),
                      dischtime=("2150-03-05 12:00:00", "2150-03-05 12:00:00", ""))
    metadata = run([*flags, f"--output={tmp_path / 'with'}", "--include_outcomes", "--feature_sets=all-age-norm"])
    c = metadata["counts"]
    assert (c["matched"], c["rejected"]) == (1, 2) and adds_up(c)
    assert c["rejected_by_reason"] == {"join/unknown_outcome": 1, "join/admission_end_unknown": 1}
    [csv_file] = (published(tmp_path / "with") / "features").glob("all-age-norm-*.csv")
    assert [(r["path"], r["alive"]) for r in read_csv(csv_file)] == [(mimic.image_path(FIRST, 50000001, "d1"),
                                                                       "1.0")]
    metadata = run([*flags, f"--output={tmp_path / 'without'}"])
    c = metadata["counts"]
    assert (c["matched"], c["rejected_by_reason"]) == (2, {"join/admission_end_unknown": 1}) and adds_up(c)
    rows = {r["dicom_id"]: r for p in (published(tmp_path / "without") / "manifest").glob("*.csv")
            for r in read_csv(p)}
    assert {d: r["in_admission"] for d, r in rows.items()} == {"d1": "20000001", "d2": "20000002"}


def test_a_feature_set_listed_twice_is_an_argument_error(tmp_path, capsys):
    """Each set is written to its own files: a repeat is refused at launch (exit 2, naming the flag), not a Beam
    traceback about a transform label."""
    with pytest.raises(SystemExit) as stopped:
        run(["--cohort=cxr_ehr", f"--mimic_cxr_root={tmp_path}", f"--mimic_iv_root={tmp_path}",
             f"--output={tmp_path / 'out'}", "--feature_sets=socio-norm,image_meta,socio-norm"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "--feature_sets" in err and "socio-norm listed more than once" in err
