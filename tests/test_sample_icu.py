"""Tests of the sample's MedFuse inputs (beam_pipeline.sample_icu): icu/icustays, icu/chartevents, hosp/diagnoses_icd
and the deaths added to hosp/admissions; the planted cases of SAMPLE.json's "medfuse" section checked against the
written files with a brute-force reading of cohort-definitions.md §B; unit cleaning of the planted values;
determinism; every other file of the tree left byte-identical."""

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

from beam_pipeline import mimic, sample, sample_icu
from beam_pipeline.cohorts import medfuse_stays
from beam_pipeline.cohorts.medfuse_events import EVENT_ITEMIDS, ITEM_LABELS, ITEM_VARIABLES, clean_value
from beam_pipeline.transforms import hourly
from cohort_files import table_rows

HOUR = dt.timedelta(hours=1)
STAY_CASES = {"cxr_at_intime_plus_48h", "cxr_at_intime", "cxr_fraction_after_intime_plus_48h", "unit_transfer",
              "two_icu_stays_in_one_admission", "unit_transfer_beside_a_single_unit_stay", "in_hospital_death",
              "dod_on_discharge_date_only", "los_under_48h", "los_exactly_48h", "under_18_in_stay_year", "events"}
EVENT_CASES = {case for case, *_ in sample_icu.EVENT_CASES}
OTHER_CASES = {"icd10_code_spelled_like_an_icd9_phenotype_code", "no_phenotype_codes"}
MINE = ("mimiciv/icu/", "mimiciv/hosp/diagnoses_icd.csv.gz", "mimiciv/hosp/admissions.csv.gz")
DEATH_COLUMNS = ("deathtime", "discharge_location", "hospital_expire_flag")


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> sample.SampleRoots:
    return sample.generate(tmp_path_factory.mktemp("icu"), subjects=60, seed=0)


@pytest.fixture(scope="module")
def section(roots) -> dict:
    return json.loads((Path(roots.cxr).parent / "SAMPLE.json").read_text())["medfuse"]


@pytest.fixture(scope="module")
def files(roots) -> dict:
    """The tables a brute-force reading needs, parsed from the written files only."""
    images = []
    for row in table_rows(roots.cxr, mimic.CXR_METADATA):
        try:
            images.append({**row, "time": mimic.parse_study_datetime(row["StudyDate"], row["StudyTime"])})
        except ValueError:  # the CXR sample's planted bad StudyTime
            continue
    stays = [{**row, "intime": mimic.parse_datetime(row["intime"]), "outtime": mimic.parse_datetime(row["outtime"])}
             for row in table_rows(roots.iv, mimic.ICUSTAYS)]
    codes: dict[str, list[str]] = {}
    for row in table_rows(roots.iv, mimic.DIAGNOSES_ICD):
        codes.setdefault(row["hadm_id"], []).append(row["icd_code"])
    return {"images": images, "stays": {row["stay_id"]: row for row in stays},
            "admissions": {row["hadm_id"]: row for row in table_rows(roots.iv, mimic.ADMISSIONS)},
            "patients": {row["subject_id"]: row for row in table_rows(roots.iv, mimic.PATIENTS)},
            "chart": table_rows(roots.iv, mimic.CHARTEVENTS), "codes": codes,
            "diagnoses": table_rows(roots.iv, mimic.DIAGNOSES_ICD)}


def digest(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and not (name := str(p.relative_to(root))).startswith(skip) and name != "SAMPLE.json"}


# --------------------------------------------------------------------------------------------------------------
# Files


def test_files_have_the_published_layout(roots) -> None:
    assert sorted(p.name for p in Path(roots.iv, "icu").iterdir()) == ["chartevents.csv.gz", "icustays.csv.gz"]
    for table in (mimic.ICUSTAYS, mimic.CHARTEVENTS, mimic.DIAGNOSES_ICD, mimic.ADMISSIONS):
        raw = Path(roots.iv, table.subdir, table.filename).read_bytes()
        text = gzip.decompress(raw).decode("utf-8")
        assert raw[:2] == b"\x1f\x8b" and text.split("\n", 1)[0] == ",".join(table.header)
        rows = list(csv.reader(io.StringIO(text, newline="")))
        assert len(rows) > 10 and all(len(row) == len(table.header) for row in rows)
        assert "\r" not in text and "NaN" not in text and "None" not in text
        for row in csv.DictReader(io.StringIO(text, newline="")):
            mimic.type_row(table, row)  # every row types (a RowError fails the test)


def test_stays_sit_in_existing_admissions(roots, files, section) -> None:
    ed_stays = {row["stay_id"] for row in table_rows(roots.ed, mimic.EDSTAYS)}
    units = {name for name, _ in sample_icu.CAREUNITS}
    for stay_id, stay in files["stays"].items():
        admission = files["admissions"][stay["hadm_id"]]
        assert re.fullmatch(r"3\d{7}", stay_id) and stay_id not in ed_stays
        assert admission["subject_id"] == stay["subject_id"] and stay["subject_id"] in files["patients"]
        assert mimic.parse_datetime(admission["admittime"]) <= stay["intime"] < stay["outtime"] <= \
            mimic.parse_datetime(admission["dischtime"])
        assert float(stay["los"]) == pytest.approx((stay["outtime"] - stay["intime"]) / dt.timedelta(days=1), abs=1e-12)
        assert {stay["first_careunit"], stay["last_careunit"]} <= units
    added = {c["hadm_id"] for c in section["cases"] if c.get("admission_added")}
    assert len({s["hadm_id"] for s in files["stays"].values()} - {str(h) for h in added}) >= 10  # drawn admissions
    ap = {i["subject_id"] for i in files["images"] if i["ViewPosition"] == "AP"}
    paired = [s for s in files["stays"].values() if any(
        i["subject_id"] == s["subject_id"] and i["ViewPosition"] == "AP" and s["intime"] <= i["time"] <= s["outtime"]
        for i in files["images"])]
    assert len(paired) >= 5 and {s["subject_id"] for s in files["stays"].values()} & ap
    assert 15 <= section["counts"]["icustays"] == len(files["stays"]) <= 40


def test_chartevents_cover_the_item_map_and_clean(files, section) -> None:
    chart, stays = files["chart"], files["stays"]
    items = {row["itemid"] for row in chart}
    assert EVENT_ITEMIDS["chartevents"] <= items  # all 36 MetaVision items of the map
    assert {str(i) for i in sample_icu.UNMAPPED} <= items - EVENT_ITEMIDS["chartevents"]
    assert len(chart) == section["counts"]["chartevents"] and 1000 < len(chart) < 8000
    dropped = []
    for row in chart:
        stay = stays[row["stay_id"]]
        assert (row["subject_id"], row["hadm_id"]) == (stay["subject_id"], stay["hadm_id"])
        assert row["charttime"] <= row["storetime"] and row["valueuom"] == sample_icu.UNITS[int(row["itemid"])]
        itemid = int(row["itemid"])
        if itemid not in ITEM_VARIABLES:
            continue
        variable = ITEM_VARIABLES[itemid]
        cleaned = clean_value(variable, row["value"], float(row["valuenum"]) if row["valuenum"] else None,
                              row["valueuom"], ITEM_LABELS[itemid])
        if cleaned is None:
            dropped.append(row["value"])
        elif hourly.CONFIG.categorical[hourly.CONFIG.index(variable)]:
            assert cleaned in hourly.CONFIG.possible_values[hourly.CONFIG.index(variable)]
            assert re.fullmatch(r"[0-6]", row["valuenum"])  # GCS: text in value, the score in valuenum
        else:
            assert isinstance(cleaned, float) and row["valuenum"] in (row["value"], "")
    assert dropped == ["ERROR"]  # only the planted text result is lost
    temperatures = [float(r["value"]) for r in chart if r["itemid"] == "223761"]
    assert temperatures and all(90 < t < 110 for t in temperatures)  # MetaVision's Fahrenheit item, in °F
    fio2 = [float(r["value"]) for r in chart if r["itemid"] == "223835"]
    assert sum(v > 1 for v in fio2) >= len(fio2) - 1  # in %, bar the planted fraction


def test_diagnoses_mix_phenotype_codes_without_dots(files) -> None:
    groups = sample_icu.phenotype_groups()
    phenotype = {code for codes in groups.values() for code in codes}
    rows = files["diagnoses"]
    assert set(files["codes"]) == set(files["admissions"])  # every admission has diagnoses
    assert all(re.fullmatch(r"[0-9A-Z]{3,7}", row["icd_code"]) for row in rows)  # stored without dots
    assert {row["icd_version"] for row in rows} == {"9", "10"}
    assert {row["icd_code"] for row in rows} & phenotype and {row["icd_code"] for row in rows} - phenotype
    for hadm_id, codes in files["codes"].items():
        seq = sorted(int(r["seq_num"]) for r in rows if r["hadm_id"] == hadm_id)
        assert seq == list(range(1, len(codes) + 1))
    icu = {s["hadm_id"] for s in files["stays"].values()}
    seen = {group for hadm in icu for group, codes in groups.items() if set(codes) & set(files["codes"][hadm])}
    assert len(seen) >= 20  # the stays cover most of the 25 labels


def test_admissions_carry_the_deaths(roots, files, section) -> None:
    admissions = list(files["admissions"].values())
    dead = [a for a in admissions if a["hospital_expire_flag"] == "1"]
    assert len(dead) == section["counts"]["in_hospital_deaths"] >= 2
    assert all(a["deathtime"] == a["dischtime"] and a["discharge_location"] == "DIED" for a in dead)
    assert all(not a["deathtime"] and a["hospital_expire_flag"] == "0" for a in admissions if a not in dead)
    assert {a["hadm_id"] for a in dead} <= {s["hadm_id"] for s in files["stays"].values()}
    added = {str(c["hadm_id"]) for c in section["cases"] if c.get("admission_added")}
    assert len(added) == section["counts"]["admissions_added"] >= 3
    for hadm_id in added:  # direct admissions of known patients, apart from the subject's other admissions
        row = files["admissions"][hadm_id]
        assert re.fullmatch(r"2\d{7}", hadm_id) and row["subject_id"] in files["patients"] and not row["edregtime"]
        others = [a for a in admissions if a["subject_id"] == row["subject_id"] and a["hadm_id"] != hadm_id]
        assert all(a["dischtime"] < row["admittime"] or row["dischtime"] < a["admittime"] for a in others)


# --------------------------------------------------------------------------------------------------------------
# Planted cases against a brute-force reading of the files


def brute_force(files: dict, stay: dict) -> dict:
    """§B.1, §B.2 and §B.4 applied to one stay, straight from the files."""
    admission, patient = files["admissions"][stay["hadm_id"]], files["patients"][stay["subject_id"]]
    single = [s for s in files["stays"].values() if s["hadm_id"] == stay["hadm_id"]
              and s["first_careunit"] == s["last_careunit"]]
    anchor_age = int(patient["anchor_age"])
    age = 91 if anchor_age >= 91 else anchor_age + stay["intime"].year - int(patient["anchor_year"])
    reason = ("unit_transfer" if stay["first_careunit"] != stay["last_careunit"] else
              "several_icu_stays" if len(single) > 1 else "under_18" if age < 18 else "kept")
    result = {"stay": reason, "ihm": None, "phenotyping": None}
    if reason != "kept":
        return result
    images = sorted((i for i in files["images"] if i["subject_id"] == stay["subject_id"] and i["ViewPosition"] == "AP"),
                    key=lambda i: (-i["time"].timestamp(), i["dicom_id"]))

    def latest(end: dt.datetime) -> str | None:
        return next((i["dicom_id"] for i in images if stay["intime"] <= i["time"] <= end), None)

    if stay["outtime"] - stay["intime"] >= 48 * HOUR:
        admittime, dischtime = (mimic.parse_datetime(admission[k]) for k in ("admittime", "dischtime"))
        deaths = [mimic.parse_datetime(admission["deathtime"]) if admission["deathtime"] else None,
                  dt.datetime.fromisoformat(patient["dod"]) if patient["dod"] else None]
        label = int(any(t is not None and admittime <= t <= dischtime for t in deaths))
        result["ihm"] = {"label": label, "cxr_dicom_id": latest(stay["intime"] + 48 * HOUR)}
    groups = sample_icu.phenotype_groups()
    codes = {c.replace(".", "") for c in files["codes"].get(stay["hadm_id"], ())}
    result["phenotyping"] = {"cxr_dicom_id": latest(stay["outtime"]),
                             "phenotypes": sorted(g for g, members in groups.items() if codes & set(members))}
    return result


def by_case(section: dict) -> dict[str, list[dict]]:
    cases: dict[str, list[dict]] = {}
    for case in section["cases"]:
        cases.setdefault(case["case"], []).append(case)
    return cases


def test_every_case_is_planted(section) -> None:
    cases = by_case(section)
    assert set(cases) - {"chosen_cxr_unusable"} == STAY_CASES | EVENT_CASES | OTHER_CASES
    assert len(cases["two_icu_stays_in_one_admission"]) == len(cases["unit_transfer_beside_a_single_unit_stay"]) == 2
    assert all(len(entries) == 1 for name, entries in cases.items()
               if name not in ("two_icu_stays_in_one_admission", "unit_transfer_beside_a_single_unit_stay"))
    stay_subjects = [c["subject_id"] for c in section["cases"] if c["case"] in STAY_CASES]
    assert len(set(stay_subjects)) == len(STAY_CASES)  # a subject of its own per case


def test_stay_expectations_follow_from_the_files(files, section) -> None:
    for case in (c for c in section["cases"] if c["case"] in STAY_CASES):
        stay = files["stays"][str(case["stay_id"])]
        assert (stay["subject_id"], stay["hadm_id"]) == (str(case["subject_id"]), str(case["hadm_id"]))
        assert mimic.format_datetime(stay["intime"]) == case["intime"]
        assert case["expected"] == brute_force(files, stay), case["case"]
        # agrees with the cohort's own stay selection on this admission's rows
        typed = [mimic.type_row(mimic.ICUSTAYS, {**s, "intime": mimic.format_datetime(s["intime"]),
                                                 "outtime": mimic.format_datetime(s["outtime"])})
                 for s in files["stays"].values() if s["hadm_id"] == stay["hadm_id"]]
        kept, drops = medfuse_stays.select_stays(
            typed, [mimic.type_row(mimic.ADMISSIONS, files["admissions"][stay["hadm_id"]])],
            [mimic.type_row(mimic.PATIENTS, files["patients"][stay["subject_id"]])])
        if case["expected"]["stay"] == "kept":
            assert case["stay_id"] in {s.stay_id for s in kept}
        else:
            assert case["stay_id"] not in {s.stay_id for s in kept} and drops[case["expected"]["stay"]] >= 1


def test_stay_cases_are_what_their_names_say(files, section) -> None:
    cases = {name: entries[0] for name, entries in by_case(section).items()}
    expect = {name: case.get("expected") for name, case in cases.items()}
    images = {i["dicom_id"]: i for i in files["images"]}

    def stay(name: str) -> dict:
        return files["stays"][str(cases[name]["stay_id"])]

    for name, offset in (("cxr_at_intime_plus_48h", 48 * HOUR), ("cxr_at_intime", dt.timedelta(0))):
        dicom = cases[name]["cxr"]["dicom_id"]
        assert images[dicom]["time"] - stay(name)["intime"] == offset and images[dicom]["ViewPosition"] == "AP"
        assert expect[name]["ihm"]["cxr_dicom_id"] == expect[name]["phenotyping"]["cxr_dicom_id"] == dicom
    late = cases["cxr_fraction_after_intime_plus_48h"]["cxr"]["dicom_id"]
    assert dt.timedelta(0) < images[late]["time"] - stay("cxr_fraction_after_intime_plus_48h")["intime"] - 48 * HOUR \
        < dt.timedelta(seconds=1)
    assert expect["cxr_fraction_after_intime_plus_48h"]["ihm"]["cxr_dicom_id"] != late
    assert expect["cxr_fraction_after_intime_plus_48h"]["phenotyping"]["cxr_dicom_id"] == late
    assert stay("unit_transfer")["first_careunit"] != stay("unit_transfer")["last_careunit"]
    assert expect["unit_transfer"]["stay"] == "unit_transfer"
    for name, outcomes in (("two_icu_stays_in_one_admission", ["several_icu_stays", "several_icu_stays"]),
                           ("unit_transfer_beside_a_single_unit_stay", ["unit_transfer", "kept"])):
        pair = by_case(section)[name]
        assert pair[0]["hadm_id"] == pair[1]["hadm_id"] and pair[0]["other_stay_id"] == pair[1]["stay_id"]
        assert [c["expected"]["stay"] for c in pair] == outcomes
    death = files["admissions"][str(cases["in_hospital_death"]["hadm_id"])]
    assert death["deathtime"] and death["hospital_expire_flag"] == "1"
    assert expect["in_hospital_death"]["ihm"]["label"] == 1
    dod = files["admissions"][str(cases["dod_on_discharge_date_only"]["hadm_id"])]
    patient = files["patients"][str(cases["dod_on_discharge_date_only"]["subject_id"])]
    assert not dod["deathtime"] and dod["hospital_expire_flag"] == "0" and patient["dod"] == dod["dischtime"][:10]
    assert expect["dod_on_discharge_date_only"]["ihm"]["label"] == 1
    assert stay("los_under_48h")["outtime"] - stay("los_under_48h")["intime"] < 48 * HOUR
    assert expect["los_under_48h"]["ihm"] is None and expect["los_under_48h"]["phenotyping"] is not None
    assert stay("los_exactly_48h")["outtime"] - stay("los_exactly_48h")["intime"] == 48 * HOUR
    assert expect["los_exactly_48h"]["ihm"] is not None and expect["los_exactly_48h"]["phenotyping"]["phenotypes"] == []
    young = cases["under_18_in_stay_year"]
    assert young["age_in_stay_year"] == 17 and expect["under_18_in_stay_year"]["stay"] == "under_18"
    assert int(files["patients"][str(young["subject_id"])]["anchor_age"]) >= 18  # adult at anchor_year
    shared = cases["icd10_code_spelled_like_an_icd9_phenotype_code"]
    rows = [r for r in files["diagnoses"] if r["hadm_id"] == str(shared["hadm_id"]) and r["icd_code"] == "V420"]
    assert [r["icd_version"] for r in rows] == ["10"]
    assert shared["expected_phenotype"] in expect["los_under_48h"]["phenotyping"]["phenotypes"]
    assert medfuse_stays.phenotype_labels([("V420", 10)])[medfuse_stays.PHENOTYPES.index(shared["expected_phenotype"])]


def test_event_cases_read_back_and_clean_as_listed(files, section) -> None:
    rows = {(r["stay_id"], r["itemid"], r["charttime"]): r for r in files["chart"]}
    cases = {c["case"]: c for c in section["cases"] if c["case"] in EVENT_CASES}
    for case in cases.values():
        stay = files["stays"][str(case["stay_id"])]
        row = rows[(str(case["stay_id"]), str(case["itemid"]), case["charttime"])]
        assert (row["value"], row["valuenum"], row["valueuom"]) == (case["value"], case["valuenum"], case["valueuom"])
        hours = (mimic.parse_datetime(row["charttime"]) - stay["intime"]) / HOUR
        los = (stay["outtime"] - stay["intime"]) / HOUR
        assert hours == case["hours"]
        variable = ITEM_VARIABLES.get(int(row["itemid"]))
        cleaned = None if variable is None else clean_value(
            variable, row["value"], float(row["valuenum"]) if row["valuenum"] else None, row["valueuom"],
            ITEM_LABELS[int(row["itemid"])])
        assert cleaned == case["expected_value"] and variable == case["variable"]
        kept = cleaned is not None and variable is not None
        assert case["in_ihm"] == (kept and 0 <= hours <= 48) and case["in_phenotyping"] == (kept and 0 <= hours <= los)
        for task in ("ihm", "phenotyping"):
            assert case[f"{task}_bin"] == (int(hours - 1e-6) if case[f"in_{task}"] else None)
        if case["in_phenotyping"]:  # the bin's value: no other row of the channel in that bin
            others = [r for r in files["chart"] if r["stay_id"] == row["stay_id"] and r is not row and
                      ITEM_VARIABLES.get(int(r["itemid"])) == variable and
                      0 <= (hours_of := (mimic.parse_datetime(r["charttime"]) - stay["intime"]) / HOUR) and
                      int(hours_of - 1e-6) == case["phenotyping_bin"]]
            assert others == [], case["case"]
    # the planted values the issue names
    assert cases["event_at_intime_plus_48h"]["hours"] == 48.0 and cases["event_at_intime_plus_48h"]["ihm_bin"] == 47
    assert not cases["event_1min_after_intime_plus_48h"]["in_ihm"]
    assert cases["event_1min_after_intime_plus_48h"]["phenotyping_bin"] == 48
    assert cases["fahrenheit_temperature"]["expected_value"] == pytest.approx(38.5)
    assert cases["celsius_temperature"]["expected_value"] == pytest.approx(37.9)
    assert (cases["bp_slash_string_systolic"]["expected_value"], cases["bp_slash_string_diastolic"]["expected_value"]) \
        == (120.0, 80.0)
    assert cases["fio2_percent"]["expected_value"] == 0.5 and cases["fio2_already_a_fraction"]["expected_value"] == 0.4
    assert cases["height_in_inches"]["expected_value"] == 170.0
    assert cases["weight_in_pounds"]["expected_value"] == pytest.approx(180 * 0.453592)
    assert cases["gcs_text"]["expected_value"] == "To Speech" and cases["glucose_text_error"]["expected_value"] is None
    assert cases["unmapped_itemid"]["variable"] is None and not cases["unmapped_itemid"]["in_phenotyping"]
    assert not cases["event_before_intime"]["in_phenotyping"] and not cases["event_after_outtime"]["in_phenotyping"]


def test_stays_choosing_a_broken_xray_are_listed(roots, files, section) -> None:
    """Found, not planted: a kept stay whose chosen X-ray belongs to a study the CXR sample damaged on purpose. Not a
    repeated metadata row (an exact copy, which medfuse merges and pairs), nor a stay of a subject with an AP image
    of unknown time (rejected as cxr_row_rejected before the pairing)."""
    top = json.loads((Path(roots.cxr).parent / "SAMPLE.json").read_text())["cases"]
    broken = {d: c["expected_reject"] for c in top if c["expected_reject"]
              and c["case"] not in ("bad_study_time", "duplicate_image_row") for d in c["dicom_ids"]}
    unknown_time = {c["subject_id"] for c in top if c["case"] == "bad_study_time"}
    found = set()
    for stay in files["stays"].values():
        if int(stay["subject_id"]) in unknown_time:
            continue
        expectation = brute_force(files, stay)
        for task in ("ihm", "phenotyping"):
            dicom = (expectation[task] or {}).get("cxr_dicom_id")
            if dicom in broken:
                found.add((int(stay["stay_id"]), task, dicom, broken[dicom]))
    listed = {(c["stay_id"], c["task"], c["dicom_id"], c["expected_reject"]) for c in section["cases"]
              if c["case"] == "chosen_cxr_unusable"}
    assert listed == found


def test_split_file_subjects_are_listed(files, section) -> None:
    test, val = medfuse_stays.load_split_files()
    listed = {e["subject_id"]: e for e in section["split_file_subjects"]}
    for subject in sorted({int(s["subject_id"]) for s in files["stays"].values()}):
        split, source = medfuse_stays.subject_split(subject, test, val, salt="sample")
        if source == medfuse_stays.HASH_FALLBACK:
            assert subject not in listed
        else:
            assert (listed[subject]["expected_split"], listed[subject]["source"]) == (split, source)
    assert [e["expected_split"] for e in listed.values()].count("test") >= 2  # seed 0 reuses two testset subjects


def test_labevents_of_mapped_items_are_counted(roots, files, section) -> None:
    labs = [r for r in table_rows(roots.iv, mimic.LABEVENTS) if r["itemid"] in EVENT_ITEMIDS["labevents"] and r["hadm_id"]]
    inside = [r for r in labs if any(s["hadm_id"] == r["hadm_id"] and s["intime"] <=
                                     mimic.parse_datetime(r["charttime"]) <= s["outtime"]
                                     for s in files["stays"].values())]
    assert len(inside) == section["counts"]["labevents_of_mapped_items_in_stays"] > 0


# --------------------------------------------------------------------------------------------------------------
# Determinism and the rest of the tree


def test_deterministic_and_the_other_files_are_unchanged(tmp_path, monkeypatch) -> None:
    """Two generations are byte-identical; a third with this step replaced by nothing has every other file
    byte-identical, the same admissions apart from the deaths and added rows, and the same SAMPLE.json apart from
    its "medfuse" section."""
    first, again = (Path(sample.generate(tmp_path / name, subjects=12, seed=5).cxr).parent for name in "ab")
    assert digest(first) == digest(again)
    assert (first / "SAMPLE.json").read_bytes() == (again / "SAMPLE.json").read_bytes()
    monkeypatch.setattr(sample_icu, "write", lambda world, roots, seed, symile=None: {})
    without = Path(sample.generate(tmp_path / "c", subjects=12, seed=5).cxr).parent
    assert digest(without, MINE) == digest(first, MINE)  # admissions: compared row by row below
    assert not (without / "mimiciv/icu").exists() and not (without / "mimiciv/hosp/diagnoses_icd.csv.gz").exists()
    manifests = [json.loads((folder / "SAMPLE.json").read_text()) for folder in (first, without)]
    assert manifests[0].pop("medfuse")["cases"] and manifests[1].pop("medfuse") == {}
    assert manifests[0] == manifests[1]
    before = {r["hadm_id"]: r for r in table_rows(str(without / "mimiciv"), mimic.ADMISSIONS)}
    after = {r["hadm_id"]: r for r in table_rows(str(first / "mimiciv"), mimic.ADMISSIONS)}
    assert set(before) <= set(after)  # and the added admissions (none in so small a world)
    changed = [h for h in before if before[h] != after[h]]
    assert changed and all({k: v for k, v in before[h].items() if k not in DEATH_COLUMNS} ==
                           {k: v for k, v in after[h].items() if k not in DEATH_COLUMNS} for h in changed)
    # rewriting the rows read back gives the same bytes: only changed rows differ
    path = without / "mimiciv" / "hosp" / "admissions.csv.gz"
    sample.write_table(tmp_path / "again.csv.gz", mimic.ADMISSIONS, table_rows(str(without / "mimiciv"),
                                                                            mimic.ADMISSIONS))
    assert (tmp_path / "again.csv.gz").read_bytes() == path.read_bytes()


def test_no_admissions_no_icu_files(tmp_path) -> None:
    roots = sample.SampleRoots(str(tmp_path / "cxr"), str(tmp_path / "ed"), str(tmp_path / "iv"))
    world = sample.World([], [], [], {"patients": [], "edstays": []})
    assert sample_icu.write(world, roots, 0) == {} and not Path(roots.iv).exists()


def test_the_latest_ap_image_is_the_latest_naive_time_on_any_machine_time_zone() -> None:
    """Two images 40 minutes apart across New York's spring-forward gap (02:30 does not exist there): by local
    timestamps the later one came first; compared as naive times, as the cohort compares them, it is the latest."""
    import os
    import subprocess
    import sys

    probe = (
        "import datetime as dt\n"
        "from beam_pipeline.sample_icu import ApImage, _latest_ap\n"
        "a = ApImage(1, 'a', 1, dt.datetime(2150, 3, 8, 2, 30), None)\n"
        "b = ApImage(1, 'b', 2, dt.datetime(2150, 3, 8, 3, 10), None)\n"
        "print(a.time.timestamp() > b.time.timestamp(), _latest_ap([a, b], dt.datetime(2150, 3, 8), "
        "dt.datetime(2150, 3, 9)).dicom_id)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          env={**os.environ, "TZ": "America/New_York"}, cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.split() == ["True", "b"]  # the local timestamps invert the order; the choice does not
