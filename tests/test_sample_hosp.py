"""Tests of the sample's Symile-MIMIC inputs (beam_pipeline.sample_hosp): hosp admissions and labevents, the
MIMIC-IV-ECG tree, the planted cases of SAMPLE.json's "symile" section checked against the written files with the
reference rules, determinism, and the ED/CXR files left byte-identical."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import io
import json
import re
from pathlib import Path

import pytest

from beam_pipeline import mimic, sample, sample_hosp
from beam_pipeline.fileio.sources import BeamSource
from beam_pipeline.transforms.ecg import quality_problem, read_ecg
from cohort_files import table_rows

DAY = dt.timedelta(days=1)
SECOND = dt.timedelta(seconds=1)
CASES = {"cxr_at_24h_excluded", "cxr_at_72h_included", "cxr_tie_smallest_dicom_id", "chosen_cxr_without_chexpert",
         "no_cxr_in_window", "ecg_at_minus_24h", "ecg_at_plus_24h", "ecg_after_nan_and_all_zero", "no_usable_ecg",
         "no_ecg_in_window", "labs_on_window_edges", "no_lab_in_window", "shared_cxr",
         "ecg_outside_windows_files_absent"}
MINE = ("mimic-iv-ecg/", "mimiciv/hosp/admissions.csv.gz", "mimiciv/hosp/labevents.csv.gz",
        "mimiciv/icu/", "mimiciv/hosp/diagnoses_icd.csv.gz")  # sample_icu builds on admissions: skipped with them


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> sample.SampleRoots:
    return sample.generate(tmp_path_factory.mktemp("hosp"), subjects=60, seed=0)


@pytest.fixture(scope="module")
def symile(roots) -> dict:
    return json.loads((Path(roots.cxr).parent / "SAMPLE.json").read_text())["symile"]


@pytest.fixture(scope="module")
def files(roots) -> dict:
    """Everything a brute-force check needs, parsed from the written files only."""
    images = []
    for row in table_rows(roots.cxr, mimic.CXR_METADATA):
        try:
            time = mimic.parse_study_datetime(row["StudyDate"], row["StudyTime"])
        except ValueError:  # the ED sample's planted bad StudyTime
            continue
        images.append({**row, "time": time})
    ecgs = [{**row, "time": mimic.parse_datetime(row["ecg_time"])} for row in table_rows(roots.ecg, mimic.ECG_RECORD_LIST)]
    labs = [{**row, "time": mimic.parse_datetime(row["charttime"])} for row in table_rows(roots.iv, mimic.LABEVENTS)]
    return {"admissions": {row["hadm_id"]: row for row in table_rows(roots.iv, mimic.ADMISSIONS)},
            "images": images, "labelled": {row["study_id"] for row in table_rows(roots.cxr, mimic.CXR_CHEXPERT)},
            "ecgs": ecgs, "labs": labs}


def digest(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and not (name := str(p.relative_to(root))).startswith(skip) and name != "SAMPLE.json"}


def test_files_have_the_published_layout(roots) -> None:
    out = Path(roots.cxr).parent
    assert roots.ecg == str(out / "mimic-iv-ecg")
    hosp = Path(roots.iv, "hosp")
    assert sorted(p.name for p in hosp.iterdir()) == ["admissions.csv.gz", "diagnoses_icd.csv.gz", "labevents.csv.gz",
                                                      "patients.csv.gz"]  # diagnoses_icd: sample_icu
    for table in (mimic.ADMISSIONS, mimic.LABEVENTS):
        raw = (hosp / table.filename).read_bytes()
        text = gzip.decompress(raw).decode("utf-8")
        assert raw[:2] == b"\x1f\x8b" and text.split("\n", 1)[0] == ",".join(table.header)
        rows = list(csv.reader(io.StringIO(text, newline="")))
        assert len(rows) > 10 and all(len(row) == len(table.header) for row in rows)
        assert "\r" not in text and "NaN" not in text and "None" not in text
    raw = Path(roots.ecg, "record_list.csv").read_bytes()
    assert raw[:2] != b"\x1f\x8b" and b"\r" not in raw  # plain CSV, as MIMIC-IV-ECG ships it
    assert raw.decode().split("\n", 1)[0] == ",".join(mimic.ECG_RECORD_LIST.header)


def test_admissions_match_patients_and_admitted_ed_stays(roots, files) -> None:
    admissions = list(files["admissions"].values())
    patients = {row["subject_id"] for row in table_rows(roots.iv, mimic.PATIENTS)}
    assert all(re.fullmatch(r"2\d{7}", row["hadm_id"]) for row in admissions)
    assert {row["subject_id"] for row in admissions} <= patients
    for row in admissions:
        assert mimic.parse_datetime(row["admittime"]) < mimic.parse_datetime(row["dischtime"])
    for stay in table_rows(roots.ed, mimic.EDSTAYS):
        if stay["hadm_id"] and stay["subject_id"] in patients:
            admission = files["admissions"][stay["hadm_id"]]
            assert (admission["subject_id"], admission["edregtime"], admission["edouttime"]) == (
                stay["subject_id"], stay["intime"], stay["outtime"])
            assert stay["intime"] <= admission["admittime"] <= stay["outtime"]
    assert any(not row["edregtime"] for row in admissions)  # direct admissions too


def test_ecg_records_read_back_as_planted(roots, files, symile) -> None:
    planted = {e["study_id"]: e["problem"] for c in symile["cases"] for e in c.get("ecgs", ())}
    absent = {c["ecg_study_id"] for c in symile["cases"] if c["case"] == "ecg_outside_windows_files_absent"}
    admitted = {row["subject_id"] for row in files["admissions"].values()}
    assert 20 <= len(files["ecgs"]) <= 60 and len(absent) == 1
    for row in files["ecgs"]:
        subject, study = row["subject_id"], row["study_id"]
        assert re.fullmatch(r"4\d{7}", study) and row["file_name"] == study and subject in admitted
        assert row["path"] == f"files/p{subject[:4]}/p{subject}/s{study}/{study}"
        assert mimic.format_datetime(row["time"]) == row["ecg_time"]
        if int(study) in absent:
            assert not Path(roots.ecg, row["path"] + ".hea").exists()
            continue
        ecg = read_ecg(BeamSource(), roots.ecg, row["path"])
        assert ecg.signal.shape == (5000, 12) and ecg.sampling_hz == 500 and ecg.lead_names == mimic.ECG_LEADS
        assert quality_problem(ecg) == planted.get(int(study)), study
    assert {"nan", "all_zero"} <= set(planted.values())


def test_labevents_mix_symile_items_with_others(files) -> None:
    labs = files["labs"]
    items = {int(row["itemid"]) for row in labs}
    assert set(mimic.SYMILE_LAB_ITEMIDS) <= items and items - set(mimic.SYMILE_LAB_ITEMIDS)
    assert any(not row["valuenum"] and int(row["itemid"]) in sample_hosp.LABS for row in labs)
    assert any(not row["hadm_id"] for row in labs)
    assert len({row["labevent_id"] for row in labs}) == len(labs)
    admittimes = {}
    for row in files["admissions"].values():
        admittimes.setdefault(row["subject_id"], []).append(mimic.parse_datetime(row["admittime"]))
    inside = [any(abs(row["time"] - a) <= DAY for a in admittimes[row["subject_id"]]) for row in labs]
    assert 0.5 < sum(inside) / len(inside) < 0.95  # spread around admissions, some outside every window


def brute_force(files: dict, subject: str, admittime: dt.datetime) -> dict:
    """Symile-MIMIC's rules (cohort-definitions.md §A) applied to one admission straight from the files."""
    images = sorted((i for i in files["images"] if i["subject_id"] == subject and i["ViewPosition"] in ("AP", "PA")
                     and DAY < i["time"] - admittime <= 3 * DAY), key=lambda i: (i["time"], i["dicom_id"]))
    cxr = images[0] if images else None
    ecgs = sorted((e for e in files["ecgs"] if e["subject_id"] == subject and abs(e["time"] - admittime) <= DAY),
                  key=lambda e: (e["time"], int(e["study_id"])))
    usable = [e for e in ecgs if quality_problem(read_ecg(BeamSource(), files["ecg_root"], e["path"])) is None]
    labs: dict[str, dict] = {}
    for row in sorted(files["labs"], key=lambda r: (r["time"], int(r["labevent_id"]))):
        if row["subject_id"] == subject and int(row["itemid"]) in sample_hosp.LABS and row["valuenum"] and \
                abs(row["time"] - admittime) <= DAY:
            labs.setdefault(row["itemid"], row)
    outcome = ("no_cxr_in_window" if not cxr else "no_chexpert_row" if cxr["study_id"] not in files["labelled"]
               else "no_ecg_in_window" if not ecgs else "no_lab_in_window" if not labs
               else "no_usable_ecg" if not usable else "written")
    return {"expected_outcome": outcome, "expected_cxr_dicom_id": cxr["dicom_id"] if cxr else None,
            "expected_ecg_study_id": int(usable[0]["study_id"]) if usable else None,
            "expected_labs": {item: labs[item]["valuenum"] for item in sorted(labs, key=int)}}


def test_every_case_is_planted(symile) -> None:
    assert {c["case"] for c in symile["cases"]} == CASES
    assert [c["case"] for c in symile["cases"]].count("shared_cxr") == 2
    assert symile["counts"]["ecgs"] == symile["counts"]["ecg_records_written"] + 1


def test_planted_expectations_follow_from_the_files(roots, files, symile) -> None:
    files = {**files, "ecg_root": roots.ecg}
    for case in (c for c in symile["cases"] if "hadm_id" in c):
        admission = files["admissions"][str(case["hadm_id"])]
        assert (admission["subject_id"], admission["admittime"]) == (str(case["subject_id"]), case["admittime"])
        expected = brute_force(files, admission["subject_id"], mimic.parse_datetime(case["admittime"]))
        assert {key: case[key] for key in expected} == expected, case["case"]


def by_case(symile: dict) -> dict[str, dict]:
    return {c["case"]: c for c in symile["cases"]}


def offset(case: dict, time: dt.datetime) -> dt.timedelta:
    return time - mimic.parse_datetime(case["admittime"])


def test_cxr_cases_sit_on_the_window_bounds(files, symile) -> None:
    cases = by_case(symile)
    images = {i["dicom_id"]: i for i in files["images"]}
    for name, bound, chosen in (("cxr_at_24h_excluded", DAY, None), ("cxr_at_72h_included", 3 * DAY, True)):
        case = cases[name]
        dicom = case["cxr_study"]["frontal_dicom_ids"][0]
        assert offset(case, images[dicom]["time"]) == bound and images[dicom]["time"].microsecond == 0
        assert case["expected_cxr_dicom_id"] == (dicom if chosen else None)
    tie = cases["cxr_tie_smallest_dicom_id"]
    frontal = [i for i in files["images"] if i["study_id"] == str(tie["cxr_study"]["study_id"])
               and i["ViewPosition"] in ("AP", "PA")]
    assert len(frontal) >= 2 and len({(i["StudyDate"], i["StudyTime"]) for i in frontal}) == 1
    assert tie["expected_cxr_dicom_id"] == min(i["dicom_id"] for i in frontal)
    unlabelled = cases["chosen_cxr_without_chexpert"]
    assert str(unlabelled["cxr_study"]["study_id"]) not in files["labelled"]
    later = unlabelled["later_frontal_dicom_ids_in_window"]
    assert later and all(images[d]["study_id"] in files["labelled"] for d in later)  # no fallback to these
    shared = [c for c in symile["cases"] if c["case"] == "shared_cxr"]
    assert shared[0]["subject_id"] == shared[1]["subject_id"] and shared[0]["hadm_id"] != shared[1]["hadm_id"]
    assert shared[0]["expected_cxr_dicom_id"] == shared[1]["expected_cxr_dicom_id"] is not None
    assert [c["shares_cxr_with_hadm_id"] for c in shared] == [shared[1]["hadm_id"], shared[0]["hadm_id"]]


def test_ecg_cases_sit_on_the_window_bounds(files, symile) -> None:
    cases = by_case(symile)
    times = {int(e["study_id"]): e["time"] for e in files["ecgs"]}
    assert offset(cases["ecg_at_minus_24h"], times[cases["ecg_at_minus_24h"]["expected_ecg_study_id"]]) == -DAY
    assert offset(cases["ecg_at_plus_24h"], times[cases["ecg_at_plus_24h"]["expected_ecg_study_id"]]) == DAY
    fallback = cases["ecg_after_nan_and_all_zero"]
    assert [e["problem"] for e in fallback["ecgs"]] == ["nan", "all_zero", None, None]
    assert fallback["expected_ecg_study_id"] == fallback["ecgs"][2]["study_id"]
    outside = cases["no_ecg_in_window"]
    assert sorted(offset(outside, times[e["study_id"]]) for e in outside["ecgs"]) == [-DAY - SECOND, DAY + SECOND]
    assert {e["problem"] for e in cases["no_usable_ecg"]["ecgs"]} == {"nan", "all_zero"}


def test_lab_cases_sit_on_the_window_bounds(files, symile) -> None:
    cases = by_case(symile)
    edges = cases["labs_on_window_edges"]
    rows = {(int(r["itemid"]), offset(edges, r["time"])): r for r in files["labs"]
            if r["subject_id"] == str(edges["subject_id"])}
    assert {(50912, -DAY - SECOND), (50912, -DAY), (50971, DAY), (50983, DAY + SECOND)} <= set(rows)
    assert edges["expected_labs"]["50912"] == rows[(50912, -DAY)]["valuenum"] != ""
    assert edges["expected_labs"]["50971"] == rows[(50971, DAY)]["valuenum"]
    assert "50983" not in edges["expected_labs"] and "50809" not in edges["expected_labs"]
    assert rows[(51221, -dt.timedelta(hours=1))]["valuenum"] == ""
    assert edges["expected_labs"]["51221"] == rows[(51221, dt.timedelta(hours=1))]["valuenum"]
    assert cases["no_lab_in_window"]["expected_labs"] == {}


def test_unread_ecg_is_far_from_every_window(files, symile) -> None:
    case = by_case(symile)["ecg_outside_windows_files_absent"]
    time = mimic.parse_datetime(case["ecg_time"])
    own = [mimic.parse_datetime(a["admittime"]) for a in files["admissions"].values()
           if a["subject_id"] == str(case["subject_id"])]
    assert own and all(abs(time - admittime) > 300 * DAY for admittime in own)


def test_deterministic_and_the_ed_and_cxr_files_are_unchanged(tmp_path, monkeypatch) -> None:
    """Two generations are byte-identical; a third with this step replaced by nothing (what the tree was before
    it) has the same ED and CXR files and the same SAMPLE.json apart from its "symile" section."""
    first, again = (Path(sample.generate(tmp_path / name, subjects=12, seed=5).cxr).parent for name in "ab")
    assert digest(first) == digest(again) and any(name.endswith(".dat") for name in digest(first))
    assert (first / "SAMPLE.json").read_bytes() == (again / "SAMPLE.json").read_bytes()
    monkeypatch.setattr(sample_hosp, "write", lambda world, roots, seed: {})
    without = Path(sample.generate(tmp_path / "c", subjects=12, seed=5).cxr).parent
    assert digest(without) == digest(first, MINE)
    manifests = [json.loads((folder / "SAMPLE.json").read_text()) for folder in (first, without)]
    assert manifests[0].pop("symile")["cases"] and manifests[1].pop("symile") == {}
    assert manifests[0].pop("medfuse")["cases"] and manifests[1].pop("medfuse") == {}  # sample_icu needs admissions
    assert manifests[0] == manifests[1]


@pytest.mark.parametrize("seed", [0, 6])
def test_no_case_sits_on_a_subject_whose_frontal_image_has_an_unknown_time(seed) -> None:
    """symile_mimic rejects every admission of such a subject at the CXR step (join/cxr_row_rejected), whatever its
    case says: seed 0 (the demo's) listed cxr_at_24h_excluded there as no_cxr_in_window, seed 6 no_usable_ecg."""
    import random

    world = sample._synthetic_world(random.Random(seed), 200)
    unknown_time = {s.subject_id for s in world.studies if s.bad_time and sample_hosp.frontal_dicoms(s)}
    assert unknown_time  # the CXR sample plants bad StudyTimes on frontal studies
    cases = [c for c in sample_hosp.build(world, seed).cases if c.get("hadm_id")]
    assert cases and not [c["case"] for c in cases if c["subject_id"] in unknown_time]
