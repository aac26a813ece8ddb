"""Tests of the sample-data generator: real MIMIC file formats, planted edge cases, determinism, open-data mode."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from beam_pipeline import mimic, sample
from conftest import OPEN_DATA

DAY = dt.timedelta(hours=24)
SECOND = dt.timedelta(seconds=1)

DOCUMENTED_ROWS = (  # mimic-schemas.md §1.2 (ProcedureCodeSequence_CodeMeaning is not in the doc's table)
    "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544,"
    "21800506,213014.531,CHEST (PA AND LAT),postero-anterior,Erect",
    "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,"
    "2544,21800506,213014.531,CHEST (PA AND LAT),lateral,Erect",
    "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab,10000032,53189527,CHEST (PA AND LAT),PA,3056,2544,"
    "21800626,165500.312,CHEST (PA AND LAT),postero-anterior,Erect",
    "e084de3b-be89b11e-20fe3f9f-9c8d8dfe-4cfd202c,10000032,53189527,CHEST (PA AND LAT),LATERAL,3056,"
    "2544,21800626,165500.312,CHEST (PA AND LAT),lateral,Erect",
    "68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714,10000032,53911762,CHEST (PORTABLE AP),AP,2705,"
    "2539,21800723,80556.875,CHEST (PORTABLE AP),antero-posterior,",
)


def path_of(roots: sample.SampleRoots, table: mimic.Table) -> Path:
    return Path(getattr(roots, table.module), table.subdir, table.filename)


def text_of(roots: sample.SampleRoots, table: mimic.Table) -> str:
    raw = path_of(roots, table).read_bytes()
    assert (raw[:2] == b"\x1f\x8b") is table.gzipped  # as the release ships it
    return (gzip.decompress(raw) if table.gzipped else raw).decode("utf-8")


def read(roots: sample.SampleRoots, table: mimic.Table) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text_of(roots, table), newline="")))


def study_time(row: dict[str, str]) -> dt.datetime | None:
    try:
        return mimic.parse_study_datetime(row["StudyDate"], row["StudyTime"])
    except ValueError:  # a StudyTime planted as bad input
        return None


def study_times(metadata: list[dict[str, str]]) -> dict[int, dt.datetime]:
    return {int(r["study_id"]): study_time(r) for r in metadata if study_time(r)}


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> sample.SampleRoots:
    return sample.generate(tmp_path_factory.mktemp("synthetic"), subjects=60, seed=0)


@pytest.fixture(scope="module")
def raw_tables(synthetic: sample.SampleRoots) -> dict[str, list[dict[str, str]]]:
    return {name: read(synthetic, table) for name, table in mimic.TABLES.items()}


@pytest.fixture(scope="module")
def manifest(synthetic: sample.SampleRoots) -> dict:
    return json.loads((Path(synthetic.cxr).parent / "SAMPLE.json").read_text())


def _parses(text: str) -> bool:
    try:
        mimic.parse_datetime(text)
        return True
    except ValueError:
        return False


@pytest.fixture(scope="module")
def tables(raw_tables) -> dict[str, list[dict[str, str]]]:
    """The tables without the duplicated image row and the unparseable vitals row planted as bad input (checked on
    their own below); rows with a bad StudyTime stay (study_times skips them)."""
    seen: set[str] = set()
    metadata = [r for r in raw_tables["cxr_metadata"] if not (r["dicom_id"] in seen or seen.add(r["dicom_id"]))]
    vitals = [r for r in raw_tables["vitalsign"] if _parses(r["charttime"])]
    return {**raw_tables, "cxr_metadata": metadata, "vitalsign": vitals}


def test_bad_input_is_planted_and_listed(raw_tables, manifest) -> None:
    """A few deliberately broken rows (what the pipeline must reject, not crash on), each listed in SAMPLE.json."""
    cases = {c["case"]: c for c in manifest["cases"] if c["expected_reject"]}
    assert set(cases) == {"bad_study_time", "duplicate_image_row", *sample.BROKEN_FILES}
    bad = [r for r in raw_tables["cxr_metadata"] if r["study_id"] == str(cases["bad_study_time"]["study_id"])]
    for row in bad:
        with pytest.raises(ValueError):
            mimic.parse_study_datetime(row["StudyDate"], row["StudyTime"])
    dicoms = [r["dicom_id"] for r in raw_tables["cxr_metadata"]]
    assert dicoms.count(cases["duplicate_image_row"]["dicom_id"]) == 2
    [unreadable] = [r for r in raw_tables["vitalsign"] if not _parses(r["charttime"])]
    assert unreadable["charttime"][11:13] == "25"
    [listed] = manifest["bad_rows"]
    assert (listed["table"], listed["expected_reject"]) == ("vitalsign", "bad_timestamp")
    assert ({k: str(listed[k]) for k in ("subject_id", "stay_id", "charttime")}
            == {k: unreadable[k] for k in ("subject_id", "stay_id", "charttime")})


def test_broken_image_files_are_planted(synthetic: sample.SampleRoots, tables, manifest) -> None:
    rows = {r["dicom_id"]: r for r in tables["cxr_metadata"]}
    files = {case: Path(synthetic.cxr, mimic.image_path(int(rows[d]["subject_id"]), int(rows[d]["study_id"]), d))
             for d, case in _broken(manifest).items()}
    assert set(files) == set(sample.BROKEN_FILES)
    assert not files["missing_image_file"].exists() and files["empty_image_file"].read_bytes() == b""
    truncated = files["truncated_image_file"].read_bytes()
    assert truncated[:2] == b"\xff\xd8" and b"\xff\xd9" not in truncated[-2:]
    assert files["random_bytes_image_file"].read_bytes()[:2] != b"\xff\xd8"
    assert all(rows[d]["ViewPosition"] in ("AP", "PA") for d in _broken(manifest))  # they reach the image stage


def test_layout_and_roots(synthetic: sample.SampleRoots) -> None:
    out = Path(synthetic.cxr).parent
    assert (synthetic.cxr, synthetic.ed, synthetic.iv, synthetic.ecg) == tuple(
        str(out / d) for d in ("mimic-cxr-jpg", "mimic-iv-ed", "mimiciv", "mimic-iv-ecg"))
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.csv*"))
    assert written == sorted(str(path_of(synthetic, t).relative_to(out)) for t in mimic.TABLES.values())


@pytest.mark.parametrize("table", mimic.TABLES.values(), ids=lambda t: t.name)
def test_files_are_csv_with_published_header_and_round_trip(synthetic: sample.SampleRoots, table) -> None:
    text = text_of(synthetic, table)
    assert text.split("\n", 1)[0] == ",".join(table.header)
    assert "\r" not in text and text.endswith("\n")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert all(len(row) == len(table.header) for row in rows) and len(rows) > 1
    again = io.StringIO(newline="")
    csv.writer(again, quoting=csv.QUOTE_MINIMAL, lineterminator="\n").writerows(rows)
    assert again.getvalue() == text  # minimal RFC-4180 quoting, nothing else
    assert "NaN" not in text and "None" not in text


def test_chief_complaints_need_real_csv_quoting(tables) -> None:
    complaints = [r["chiefcomplaint"] for r in tables["triage"]]
    assert sum("," in c for c in complaints) >= 5
    assert any('"' in c for c in complaints)
    assert any("\n" in c for c in complaints)
    assert len(tables["triage"]) == len(tables["edstays"])


def test_study_time_spellings_all_parse(tables) -> None:
    spellings = [r["StudyTime"] for r in tables["cxr_metadata"]]
    assert any(re.fullmatch(r"[1-9]\d{4}\.\d*[1-9]", s) for s in spellings)  # 5 digits: dropped zero + fraction
    assert any(re.fullmatch(r"\d{1,6}", s) for s in spellings)  # integer spelling
    assert "4.0" in spellings  # 00:00:04
    assert any(s.endswith(".0") for s in spellings)
    for row in tables["cxr_metadata"]:
        assert re.fullmatch(r"2[12]\d{6}", row["StudyDate"])
        assert study_time(row) is None or 2110 <= study_time(row).year < 2200
    assert sum(study_time(r) is None for r in tables["cxr_metadata"]) <= 4  # only the planted bad rows
    per_study = {}
    for row in tables["cxr_metadata"]:
        assert per_study.setdefault(row["study_id"], (row["StudyDate"], row["StudyTime"])) == (
            row["StudyDate"], row["StudyTime"])


def _broken(manifest) -> dict[str, str]:
    """dicom_id -> case, for the image files damaged on purpose."""
    return {c["dicom_id"]: c["case"] for c in manifest["cases"] if c["case"] in sample.BROKEN_FILES}


def test_every_image_exists_with_metadata_size(synthetic: sample.SampleRoots, tables, manifest) -> None:
    sizes = set()
    broken = _broken(manifest)
    for row in tables["cxr_metadata"]:
        path = Path(synthetic.cxr, mimic.image_path(int(row["subject_id"]), int(row["study_id"]), row["dicom_id"]))
        if row["dicom_id"] in broken:
            continue
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert image is not None and image.dtype == np.uint8 and image.ndim == 2, path
        assert image.shape == (int(row["Rows"]), int(row["Columns"]))
        assert 600 <= max(image.shape) <= 900 and image.std() > 20
        sizes.add(image.shape)
    assert any(r > c for r, c in sizes) and any(r < c for r, c in sizes)
    jpgs = list(Path(synthetic.cxr, "files").rglob("*.jpg"))
    assert len(jpgs) == len(tables["cxr_metadata"]) - 1  # the missing one


def test_ids_have_mimic_shapes_and_are_unique(tables) -> None:
    def column(name: str, key: str) -> list[str]:
        return [r[key] for r in tables[name]]

    for value in column("cxr_metadata", "subject_id") + column("edstays", "subject_id"):
        assert re.fullmatch(r"1\d{7}", value)
    assert all(re.fullmatch(r"3\d{7}", v) for v in column("edstays", "stay_id"))
    assert all(re.fullmatch(r"(2\d{7})?", v) for v in column("edstays", "hadm_id"))
    assert any(v == "" for v in column("edstays", "hadm_id"))
    assert all(re.fullmatch(r"5\d{7}", v) for v in column("cxr_metadata", "study_id"))
    dicoms = column("cxr_metadata", "dicom_id")
    assert all(re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}", d) for d in dicoms)
    assert len(set(dicoms)) == len(dicoms)
    for name in ("edstays", "patients"):
        keys = column(name, "stay_id" if name == "edstays" else "subject_id")
        assert len(set(keys)) == len(keys)
    subject_of = {}
    for row in tables["cxr_metadata"]:
        assert subject_of.setdefault(row["study_id"], row["subject_id"]) == row["subject_id"]
    hadm = [v for v in column("edstays", "hadm_id") if v]
    stays = set(column("edstays", "stay_id"))
    assert not stays & set(hadm) and not stays & set(subject_of)


def test_ed_tables_are_plausible(tables) -> None:
    stays = {r["stay_id"]: r for r in tables["edstays"]}
    for stay in stays.values():
        intime, outtime = mimic.parse_datetime(stay["intime"]), mimic.parse_datetime(stay["outtime"])
        assert intime.second == 0 and dt.timedelta(hours=2) <= outtime - intime <= dt.timedelta(hours=14, minutes=1)
    keys = [(r["stay_id"], r["charttime"]) for r in tables["vitalsign"]]
    assert len(set(keys)) == len(keys)
    for row in tables["vitalsign"] + tables["medrecon"] + tables["pyxis"]:
        stay = stays[row["stay_id"]]
        assert stay["intime"] <= row["charttime"] <= stay["outtime"] and stay["subject_id"] == row["subject_id"]
    triage = tables["triage"]
    assert any(all(r[v] == "" for v in mimic.VITALS) for r in triage)
    assert {"UA", "unable", "13", ""} & {r["pain"] for r in triage}
    assert {r["acuity"] for r in triage} <= {"", "1", "2", "3", "4", "5"}
    temperatures = {r["temperature"] for r in triage if r["temperature"]}
    assert any("." not in t for t in temperatures) and any(re.fullmatch(r"\d+\.\d", t) for t in temperatures)
    assert all(re.fullmatch(r"\d+", r[v]) for r in triage for v in mimic.VITALS[1:] if r[v])
    assert all(re.fullmatch(r"0|\d{6}", r["gsn"]) and re.fullmatch(r"0|\d{11}", r["ndc"]) for r in tables["medrecon"])
    assert any(r["name"].startswith("*") for r in tables["medrecon"])
    assert any(re.fullmatch(r"0\d{7}", r["etccode"]) for r in tables["medrecon"])
    assert all(re.fullmatch(r"(\d{6})?", r["gsn"]) for r in tables["pyxis"])
    assert any(r["gsn"].startswith("00") for r in tables["pyxis"])
    assert {r["icd_version"] for r in tables["diagnosis"]} == {"9", "10"}


def test_patients_consistent_with_stays(tables) -> None:
    patients = {r["subject_id"]: r for r in tables["patients"]}
    for row in tables["patients"]:
        assert 18 <= int(row["anchor_age"]) <= 91 and 2110 <= int(row["anchor_year"]) <= 2200
        start = int(row["anchor_year_group"][:4])
        assert row["anchor_year_group"] == f"{start} - {start + 2}" and row["gender"] in ("F", "M")
    for stay in tables["edstays"]:
        if stay["subject_id"] in patients:
            patient = patients[stay["subject_id"]]
            assert 0 <= int(stay["intime"][:4]) - int(patient["anchor_year"]) <= 8
            assert stay["gender"] == patient["gender"]
    cxr_subjects = {r["subject_id"] for r in tables["cxr_metadata"]}
    assert cxr_subjects - set(patients)  # some CXR subjects are missing from patients
    assert cxr_subjects - {r["subject_id"] for r in tables["edstays"]}  # and some never came to the ED


def test_labels_and_split(tables) -> None:
    studies = {r["study_id"] for r in tables["cxr_metadata"]}
    for name in ("cxr_chexpert", "cxr_negbio"):
        rows = tables[name]
        assert len({r["study_id"] for r in rows}) == len(rows) and {r["study_id"] for r in rows} < studies
        assert any(all(r[label] == "" for label in mimic.LABELS) for r in rows)
        for row in rows:
            assert {row[label] for label in mimic.LABELS} <= {"1.0", "0.0", "-1.0", ""}
            found = any(row[label] in ("1.0", "-1.0") for label in mimic.LABELS
                        if label not in ("No Finding", "Support Devices"))
            assert not (found and row["No Finding"] == "1.0")
        assert {r["No Finding"] for r in rows} >= {"1.0", ""}
    split = tables["cxr_split"]
    assert sorted(r["dicom_id"] for r in split) == sorted(r["dicom_id"] for r in tables["cxr_metadata"])
    per_subject = {}
    for row in split:
        assert per_subject.setdefault(row["subject_id"], row["split"]) == row["split"]
    assert set(per_subject.values()) == {"train", "validate", "test"}


def test_views_are_consistent(tables) -> None:
    metadata = tables["cxr_metadata"]
    views = {r["ViewPosition"] for r in metadata}
    assert {"PA", "AP", "LATERAL", "LL", ""} <= views
    for row in metadata:
        assert row["ViewCodeSequence_CodeMeaning"] == sample.VIEW_CODES[row["ViewPosition"]]
        assert row["PerformedProcedureStepDescription"] in ("CHEST (PA AND LAT)", "CHEST (PORTABLE AP)")
    by_study = {}
    for row in metadata:
        by_study.setdefault(row["study_id"], []).append(row["ViewPosition"])
    assert all({"AP", "PA"} & set(v) for v in by_study.values())  # every study has a frontal image
    assert any(v.count("AP") == 2 for v in by_study.values())


def test_planted_edge_cases_recomputed_from_files(tables, manifest) -> None:
    stays = {r["stay_id"]: (r["subject_id"], mimic.parse_datetime(r["intime"]), mimic.parse_datetime(r["outtime"]))
             for r in tables["edstays"]}
    times = study_times(tables["cxr_metadata"])
    offsets = {"at_intime": dt.timedelta(0), "at_intime_plus_24h": DAY, "1s_after_intime_plus_24h": DAY + SECOND,
               "1s_before_intime": -SECOND}
    found = set()
    for case in (c for c in manifest["cases"] if c["case"] != "bad_study_time"):
        subject = str(case["subject_id"])
        subject_stays = [(intime, outtime, int(stay)) for stay, (owner, intime, outtime) in stays.items()
                         if owner == subject]
        time = times[case["study_id"]]
        hits = [(time <= outtime, intime, -stay) for intime, outtime, stay in subject_stays
                if intime <= time <= intime + DAY]
        assert case["expected_stay_id"] == (-max(hits)[2] if hits else "none"), case
        if case["case"] in offsets:
            assert time - stays[str(case["planted_stay_id"])][1] == offsets[case["case"]]
            found.add(case["case"])
    assert found == set(offsets)
    cases = {c["case"]: c for c in manifest["cases"]}
    assert cases["at_intime_plus_24h"]["expected_stay_id"] == cases["at_intime_plus_24h"]["planted_stay_id"]
    for name in ("1s_after_intime_plus_24h", "1s_before_intime", "hours_before_intime", "outpatient", "no_ed_stays"):
        assert cases[name]["expected_stay_id"] == "none", name
    assert {"at_shared_boundary", "in_overlap", "not_in_patients", "vitalsign_after_study", "pyxis_after_study",
            "no_label_row", "all_blank_labels", "two_ap_images", "ll_view", "blank_view_position",
            "integer_study_time", "short_study_time", "dropped_leading_zero"} <= set(cases)


def test_boundary_studies_exist_without_the_manifest(tables) -> None:
    intimes = {}
    for row in tables["edstays"]:
        intimes.setdefault(row["subject_id"], []).append(mimic.parse_datetime(row["intime"]))
    subject = {int(r["study_id"]): r["subject_id"] for r in tables["cxr_metadata"]}
    deltas = {time - intime for study, time in study_times(tables["cxr_metadata"]).items()
              for intime in intimes.get(subject[study], [])}
    assert {dt.timedelta(0), DAY, DAY + SECOND, -SECOND} <= deltas
    outtimes = {r["outtime"] for r in tables["edstays"]}
    assert any(r["intime"] in outtimes for r in tables["edstays"])  # back-to-back stays


def test_vitals_charted_after_a_study(tables) -> None:
    """Leakage tests need in-stay studies with vitals charted later in the same stay."""
    last_vital: dict[str, str] = {}
    for row in tables["vitalsign"]:
        last_vital[row["stay_id"]] = max(last_vital.get(row["stay_id"], ""), row["charttime"])
    subject = {int(r["study_id"]): r["subject_id"] for r in tables["cxr_metadata"]}
    late = [study for study, time in study_times(tables["cxr_metadata"]).items() for stay in tables["edstays"]
            if stay["subject_id"] == subject[study]
            and stay["intime"] <= mimic.format_datetime(time) < last_vital.get(stay["stay_id"], "")]
    assert len(late) >= 5


def test_same_arguments_give_byte_identical_trees(tmp_path: Path) -> None:
    """Also across processes with another hash seed, so no set or dict order leaks into the output."""
    first = sample.generate(tmp_path / "a", subjects=25, seed=7)
    subprocess.run([sys.executable, "-m", "beam_pipeline.sample", str(tmp_path / "b"), "--subjects", "25",
                    "--seed", "7"], check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "123"},
                   cwd=Path(__file__).resolve().parents[1])
    second = sample.SampleRoots(str(tmp_path / "b" / "mimic-cxr-jpg"), "", "")
    other = sample.generate(tmp_path / "c", subjects=25, seed=8)
    digests = [tree_digest(Path(roots.cxr).parent) for roots in (first, second, other)]
    assert digests[0] == digests[1] and len(digests[0]) > 50
    assert digests[0] != digests[2]


def test_a_sample_is_written_only_into_a_new_or_empty_folder(tmp_path: Path) -> None:
    """A planted missing image is a file not written: generating over an earlier sample of the same seed would leave
    that sample's file there, readable. The command line refuses too (exit 2, the folder named), writing nothing."""
    first = sample.generate(tmp_path / "sample", subjects=12, seed=0)
    before = tree_digest(Path(first.cxr).parent)
    with pytest.raises(FileExistsError, match="not an empty folder"):
        sample.generate(tmp_path / "sample", subjects=6, seed=0)
    done = subprocess.run([sys.executable, "-m", "beam_pipeline.sample", str(tmp_path / "sample"), "--subjects", "6"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 2 and f"{tmp_path / 'sample'} is not an empty folder" in done.stderr
    assert tree_digest(Path(first.cxr).parent) == before
    (tmp_path / "empty").mkdir()
    assert Path(sample.generate(tmp_path / "empty", subjects=3, seed=0).cxr).is_dir()


def test_full_size_radiograph_is_mimic_like() -> None:
    data = sample.encode(sample.radiograph(np.random.default_rng(0), 3056, 2544, lateral=False))
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image.shape == (3056, 2544) and image.dtype == np.uint8
    assert 1.3e6 <= len(data) <= 1.8e6  # MIMIC-CXR-JPG's mean is 1.51 MB (570.3 GB / 377,110 JPEGs)
    assert image.std() > 40 and abs(float(image[:, :1272].mean()) - float(image[:, 1272:].mean())) < 40


def test_cli_prints_pipeline_flags(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sample.main([str(tmp_path), "--subjects", "5", "--seed", "3"])
    out = capsys.readouterr().out.strip()
    assert out == (f"--mimic_cxr_root={tmp_path / 'mimic-cxr-jpg'} --mimic_ed_root={tmp_path / 'mimic-iv-ed'} "
                   f"--mimic_iv_root={tmp_path / 'mimiciv'} --mimic_ecg_root={tmp_path / 'mimic-iv-ecg'} "
                   f"--mimic_cxr_reports={tmp_path / 'mimic-cxr-jpg'}")
    with pytest.raises(ValueError):
        sample.generate(tmp_path / "x", subjects=1, image_size="huge")


# --------------------------------------------------------------------------------------------------------------
# Open-data mode


@pytest.fixture(scope="module")
def open_run(tmp_path_factory: pytest.TempPathFactory):
    parent = tmp_path_factory.mktemp("open")
    before = tree_digest(OPEN_DATA)
    roots = sample.generate_on_open_data(parent / "out", OPEN_DATA, seed=0)
    return parent, roots, before


def test_open_data_writes_only_the_cxr_side_inside_outdir(open_run) -> None:
    parent, roots, before = open_run
    assert [p.name for p in parent.iterdir()] == ["out"]
    assert sorted(p.name for p in (parent / "out").iterdir()) == ["SAMPLE.json", "mimic-cxr-jpg"]
    assert roots.ed == str(OPEN_DATA / "mimic-iv-ed-demo-2.2") and roots.iv == str(OPEN_DATA / "mimic-iv-demo-2.2")
    assert tree_digest(OPEN_DATA) == before


def test_open_data_documented_rows_verbatim(open_run) -> None:
    _, roots, _ = open_run
    text = gzip.decompress(path_of(roots, mimic.CXR_METADATA).read_bytes()).decode()
    lines = set(text.splitlines())
    assert set(DOCUMENTED_ROWS) <= lines and len(DOCUMENTED_ROWS) == 5
    metadata = read(roots, mimic.CXR_METADATA)
    documented = {r["dicom_id"]: r for r in metadata if r["subject_id"] == "10000032"}
    assert documented["fffabebf-74fd3a1f-673b6b41-96ec0ac9-2ab69818"]["study_id"] == "53911762"
    assert documented["ea030e7a-2e3b1346-bc518786-7a8fd698-f673b44c"]["study_id"] == "56699142"
    generated = set()
    broken = _broken(json.loads((Path(roots.cxr).parent / "SAMPLE.json").read_text()))
    assert set(broken.values()) == set(sample.BROKEN_FILES)
    for row in (r for r in metadata if r["dicom_id"] not in broken):
        path = Path(roots.cxr, mimic.image_path(int(row["subject_id"]), int(row["study_id"]), row["dicom_id"]))
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert image.shape == (int(row["Rows"]), int(row["Columns"]))
        if row["subject_id"] != "10000032":
            assert image.shape == (512, 512)
            generated.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(generated) == 2  # both NIH images, each encoded once


def test_open_data_is_deterministic(open_run, tmp_path: Path) -> None:
    _, roots, _ = open_run
    again = sample.generate_on_open_data(tmp_path, OPEN_DATA, seed=0)
    assert tree_digest(Path(roots.cxr).parent) == tree_digest(Path(again.cxr).parent)


def test_open_data_studies_sit_on_real_stays(open_run) -> None:
    _, roots, _ = open_run
    stays = read(roots, mimic.EDSTAYS)
    intime = {r["stay_id"]: mimic.parse_datetime(r["intime"]) for r in stays}
    metadata = read(roots, mimic.CXR_METADATA)
    times = study_times(metadata)
    assert intime["39399961"] <= times[53911762] <= intime["39399961"] + DAY
    by_subject = {}
    for row in stays:
        by_subject.setdefault(row["subject_id"], []).append(intime[row["stay_id"]])
    subject = {int(r["study_id"]): r["subject_id"] for r in metadata}
    generated = [s for s in times if subject[s] in by_subject and subject[s] != "10000032"]
    near = [s for s in generated if any(-DAY <= times[s] - t <= 3 * DAY for t in by_subject[subject[s]])]
    assert len(generated) > 100 and len(near) >= 0.7 * len(generated)
    patients = {r["subject_id"] for r in read(roots, mimic.PATIENTS)}
    assert set(subject.values()) - patients and set(subject.values()) - set(by_subject)
    cases = json.loads((Path(roots.cxr).parent / "SAMPLE.json").read_text())["cases"]
    assert {c["case"] for c in cases} >= {"at_intime", "at_intime_plus_24h", "1s_after_intime_plus_24h",
                                          "1s_before_intime", "at_shared_boundary"}
    documented = {c["study_id"]: c["expected_stay_id"] for c in cases if c["case"] == "documented_10000032"}
    assert documented[50414267] == 33258284 and documented[53189527] == 38112554 and documented[53911762] == 39399961


def test_the_command_line_prints_roots_that_hold_their_files_and_wants_a_subject(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "beam_pipeline.sample", str(tmp_path / "s"), "--subjects", "3"],
                          capture_output=True, text=True, cwd=repo, check=True)
    flags = dict(flag.split("=", 1) for flag in done.stdout.split())
    assert len(flags) == 5 and all(Path(path).is_dir() for path in flags.values())
    assert list(Path(flags["--mimic_cxr_reports"]).glob("files/p*/p*/s*.txt"))  # beside the study folders
    assert list(Path(flags["--mimic_ecg_root"]).glob("record_list.csv"))
    refused = subprocess.run([sys.executable, "-m", "beam_pipeline.sample", str(tmp_path / "none"), "--subjects", "0"],
                             capture_output=True, text=True, cwd=repo)
    assert refused.returncode == 2 and "must be at least 1, not 0" in refused.stderr
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("seed", [4, 10])
def test_late_event_cases_sit_on_studies_that_reach_a_record(seed: int) -> None:
    """A study planted broken or with a bad StudyTime never reaches a record, so a "charted after the X-ray" case
    there checked nothing (seed 4: vitalsign_ and pyxis_after_study on an empty image file)."""
    import random

    world = sample._synthetic_world(random.Random(seed), 200)
    late = [study for case, study in world.cases if case.endswith("_after_study")]
    assert len(late) == 6 and not [s.study_id for s in late if s.broken_file or s.bad_time]
