"""The cxr_ehr data card: report.build dispatches on config["cohort"]; the funnel, splits, feature coverage (views and
orientation with missing, gender, 10-year age bins, inside an admission / ICU stay), outcome counts and feature sets
match metadata.json and the manifest under the small-cell rules (and their complementary suppression); aggregate
only by default, X-ray thumbnails with their raw variables only with samples."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from beam_pipeline import mimic, report, report_cards, report_cxr_ehr, sample
from beam_pipeline.cohorts import cxr_ehr_features as ehr
from beam_pipeline.run import run
from card_checks import (HIDDEN, card, card_with_samples, check_unit_funnel, hidden_ok, manifest_rows, share_ok,
                         shown)
from conftest import ONE_WORKER

SECTIONS = ["dataset", "funnel", "splits", "coverage", "outcomes", "feature-sets", "samples", "provenance"]
NOT_COUNTS = {"dataset", "matching", "feature-sets", "config", "versions", "image"}  # rules, widths, settings
SETS = ("socio-norm", "all-age-norm")
# the coverage table's variable -> the manifest column its categories come from (the admission / ICU stay: whether
# the column holds an id)
MANIFEST_COLUMN = {"view": "view", "orientation": "orientation", "gender": "gender", "age (10-year bin)": "ageR10",
                   report_cxr_ehr.IN_ADMISSION: "in_admission", report_cxr_ehr.IN_ICU: "in_icu"}


@pytest.fixture(scope="module")
def ehr_run(tmp_path_factory):
    """The sample tree (with its hosp and ICU tables), one cxr_ehr run in process with outcomes and two feature
    sets, and its default card: (output, metadata, manifest, index, page)."""
    base = tmp_path_factory.mktemp("report-cxr-ehr")
    roots = sample.generate(base / "sample", subjects=120, seed=5)
    assert (Path(roots.iv) / "icu" / "icustays.csv.gz").exists()
    output = base / "out"
    metadata = run(["--cohort=cxr_ehr", f"--mimic_cxr_root={roots.cxr}", f"--mimic_iv_root={roots.iv}",
                    f"--output={output}", "--image_size=32", ONE_WORKER, f"--feature_sets={','.join(SETS)}",
                    "--include_outcomes"])
    return (output, metadata, manifest_rows(output),
            *card(output))  # what run.main does after every run: aggregate only


@pytest.fixture(scope="module")
def with_samples(ehr_run):
    return card_with_samples(ehr_run[0])


def test_card_is_registered_with_its_sections_and_dataset_line(ehr_run):
    _, metadata, manifest, index, page = ehr_run
    text = index.read_text()
    assert report.CARDS["cxr_ehr"] == "beam_pipeline.report_cxr_ehr"
    assert metadata["config"]["cohort"] == "cxr_ehr" and metadata["counts"]["matched"] == len(manifest) > 10
    assert page.sections == SECTIONS and metadata["dataset"] in text
    assert set(page.images) == {"funnel.png", "coverage.png"}
    assert all((index.parent / src).stat().st_size > 10_000 for src in page.images)
    rows = dict(page.tables["dataset"][1:])
    assert rows["cohort"] == "cxr_ehr" and rows["dataset"] == metadata["dataset"]
    assert rows["views"].startswith("every view") and rows["feature sets (--feature_sets)"] == ", ".join(SETS)
    assert rows["EHR match (--ehr_match)"] == f"time: {metadata['ehr_match']['admission']['rule']}"
    assert rows["outcomes (--include_outcomes)"].startswith("written") and "32 px" in rows["images written"]
    matching = {row[0]: row[1:] for row in page.tables["matching"][1:]}
    assert matching == {"admission": [metadata["ehr_match"]["admission"]["rule"], "hadm_id"],
                        "icu stay": [metadata["ehr_match"]["icu_stay"]["rule"], "stay_id"]}
    inputs = {row[0]: row[3] for row in page.tables["inputs"][1:]}
    assert inputs == {k: v["sha256"] for k, v in metadata["inputs"].items()}


def test_funnel_steps_and_reasons_match_metadata(ehr_run):
    _, metadata, _, _, page = ehr_run
    counts = metadata["counts"]
    names = check_unit_funnel(page, metadata)
    assert list(metadata["funnel"]) == ["images of a kept view", "with a patients row, gender and age", "written"]
    # the first step is never hidden: the inputs' rows show it
    assert page.tables["funnel"][1] == ["images of a kept view", shown(counts["images_kept_view"])]
    assert counts["dropped"]["no_patient"] > 0 and counts["rejected"] > 0
    assert all(names.index(f"− dropped: {r}") < names.index("with a patients row, gender and age")
               for r in ehr.DROPS)
    assert all(names.index("with a patients row, gender and age") < names.index(f"− rejected: {r}") <
               names.index("written") for r in counts["rejected_by_reason"])
    assert "<11" in [row[1] for row in page.tables["funnel"]]  # the sample has small rejects to hide


def test_splits_show_images_and_patients(ehr_run):
    _, metadata, manifest, index, page = ehr_run
    counts = metadata["counts"]
    rows = {row[0]: row[1:] for row in page.tables["splits"][1:]}
    assert list(rows) == [*mimic.SPLITS, "total"]
    for split in mimic.SPLITS:
        records = [r for r in manifest if r["split"] == split]
        assert len(records) == counts["per_split"][split]
        assert len({r["subject_id"] for r in records}) == counts["patients_per_split"][split]
        assert hidden_ok(rows[split][0], len(records))
        assert hidden_ok(rows[split][1], counts["patients_per_split"][split])
    assert rows["total"] == [shown(counts["matched"]), shown(len({r["subject_id"] for r in manifest}))]
    for column in (0, 1):
        assert sum(rows[s][column] in HIDDEN for s in (*mimic.SPLITS, "total")) != 1
    assert "Strategy: <b>official</b>" in index.read_text()


def test_feature_coverage_matches_metadata_and_the_manifest(ehr_run):
    _, metadata, manifest, _, page = ehr_run
    coverage, matched = metadata["counts"]["feature_coverage"], metadata["counts"]["matched"]
    rows = page.tables["coverage"][1:]
    assert [row[0] for row in rows] == [title for title, categories in report_cxr_ehr.COVERAGE.values()
                                        for _ in categories]  # every category, zero ones included
    assert [row[1] for row in rows if row[0] == "view"] == [*ehr.VIEWS, "missing"]
    assert [row[1] for row in rows if row[0] == "orientation"] == [*ehr.ORIENTATIONS, "missing"]
    assert [row[1] for row in rows if row[0] == "age (10-year bin)"] == list(ehr.AGE_R10_LABELS)
    keys = {(title, category): key for title, categories in report_cxr_ehr.COVERAGE.values()
            for category, key in categories}
    for variable, category, cell, share in rows:
        column = MANIFEST_COLUMN[variable]
        if column in ("in_admission", "in_icu"):
            n = sum(bool(r[column]) == (category == "yes") for r in manifest)
        else:
            n = sum(r[column] == category for r in manifest)
        assert n == coverage.get(keys[variable, category], 0), (variable, category)
        assert hidden_ok(cell, n) and share_ok(share, cell, n, matched), (variable, category, cell, share)
    for title in MANIFEST_COLUMN:  # each variable adds up to the written images, shown in the header
        cells = [row[2] for row in rows if row[0] == title]
        assert sum(coverage.get(keys[title, row[1]], 0) for row in rows if row[0] == title) == matched
        assert sum(cell in HIDDEN for cell in cells) != 1, (title, cells)
    shares = {(row[0], row[1]): row[3] for row in rows}
    inside = sum(bool(r["in_admission"]) for r in manifest)
    assert shares[report_cxr_ehr.IN_ADMISSION, "yes"] == f"{inside / matched:.1%}" and 10 < inside < matched - 10
    assert any(r["view"] == "missing" for r in manifest) and any(r["orientation"] == "missing" for r in manifest)


def test_outcomes_are_named_as_such_and_only_counted(ehr_run):
    _, metadata, manifest, index, page = ehr_run
    text = index.read_text()
    section = text[text.index('<section id="outcomes">'):text.index('<section id="feature-sets">')]
    assert "future" in section and "never features" in section and "no outcome statistics" in section
    header, *rows = page.tables["outcomes"]
    assert header == ["outcome", "what", "images with a value", "images without"]
    assert [row[0] for row in rows] == metadata["outcomes"] == list(ehr.OUTCOMES)
    matched = metadata["counts"]["matched"]
    for name, _, with_value, without in rows:
        n = sum(bool(r[name]) for r in manifest)
        assert hidden_ok(with_value, n) and hidden_ok(without, matched - n)
        assert sum(cell in HIDDEN for cell in (with_value, without)) != 1
    assert {r["outcome_hospital_expire_flag"] for r in manifest} >= {"0", "1"}  # values the card does not count
    assert all("died" not in row[0] and "alive" not in row[0] for rows in page.tables.values() for row in rows)
    coverage = {(row[0], row[1]): row[2] for row in page.tables["coverage"][1:]}
    assert rows[0][2:] == [coverage[report_cxr_ehr.IN_ADMISSION, "yes"], coverage[report_cxr_ehr.IN_ADMISSION, "no"]]


def test_feature_sets_with_widths_outcome_columns_and_rows(ehr_run):
    _, metadata, _, index, page = ehr_run
    rows = {row[0]: row[1:] for row in page.tables["feature-sets"][1:]}
    assert list(rows) == ["TFRecords ehr/features", *(f"features/{name}-*.csv" for name in SETS)]
    assert rows["TFRecords ehr/features"][:3] == [f"{len(ehr.FEATURE_COLUMNS)} columns",
                                                  ", ".join(ehr.FEATURE_COLUMNS), "none"]
    for name in SETS:
        width, columns, future, records, _ = rows[f"features/{name}-*.csv"]
        assert width == f"{len(ehr.FEATURE_SETS[name])} columns"
        assert columns == ", ".join(metadata["feature_sets"][name])
        assert future == ("alive, died" if ehr.requires_outcomes(name) else "none")
        assert records == shown(metadata["outputs"]["features"][name]["records"]) == shown(
            metadata["counts"]["matched"])
    text = index.read_text()
    section = text[text.index('<section id="feature-sets">'):text.index('<section id="samples">')]
    assert 'class="warn">all-age-norm: alive/died' in section and "not a feature" in section


def test_default_card_is_aggregate_only(ehr_run):
    _, metadata, manifest, index, page = ehr_run
    text = index.read_text()
    assert report.PHI_BANNER not in text and 'id="aggregate"' in text and "--samples N" in text
    assert not [src for src in page.images if src.startswith("sample")] and "sample X-ray" not in text
    record_ids = {r[column] for r in manifest for column in ("dicom_id", "subject_id", "study_id", "in_admission",
                                                             "in_icu", "study_datetime")}
    assert not [value for value in record_ids - {""} if value in text]
    small = [(name, row) for name, rows in page.tables.items() if name not in NOT_COUNTS
             for row in rows[1:] for cell in row[1:] if re.fullmatch(r"[\d,]+", cell) and 1 <= int(cell) <= 10]
    assert not small, small  # not one count from 1 to 10 anywhere on the page


def test_samples_add_a_thumbnail_with_its_variables_under_the_banner(ehr_run, with_samples):
    _, _, manifest, _, _ = ehr_run
    index, page = with_samples
    text = index.read_text()
    assert text.index(report.PHI_BANNER) < text.index("<h1>") and "do not share" in text.split("</title>")[0]
    assert "data use agreement" in text and page.sections == SECTIONS
    [dicom_id] = re.findall(r'alt="sample X-ray ([0-9a-f-]+)"', text)
    row = next(r for r in manifest if r["dicom_id"] == dicom_id)
    assert row["split"] == "val" and "sample-00.png" in page.images
    assert (index.parent / "sample-00.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = text[text.index('<figure class="card">'):text.index("</figure>")]
    for name, value in (("view", row["view"]), ("orientation", row["orientation"]), ("gender", row["gender"]),
                        ("age", f"{row['age']} ({row['ageR10']})"),
                        (report_cxr_ehr.IN_ADMISSION, "yes" if row["in_admission"] else "no"),
                        (report_cxr_ehr.IN_ICU, "yes" if row["in_icu"] else "no")):
        assert f"<br>{name}: {value}" in card, name
    assert "outcome" not in card and "died" not in card


def made_up(**counts) -> dict:
    """A metadata.json with the parts the coverage, outcome and split cells read."""
    coverage = {"features/gender/M": 5, "features/gender/F": 95, "features/view/PA": 60, "features/view/AP": 37,
                "features/view/missing": 3, "features/orientation/Erect": 100, "features/ageR10/50-60": 100,
                "features/in_admission": 96, "features/no_admission": 4, "features/in_icu": 40,
                "features/no_icu": 60}
    return {"counts": {"matched": 100, "feature_coverage": coverage, "per_split": {"train": 80, "val": 16, "test": 4},
                       "patients_per_split": {"train": 30, "val": 12, "test": 2}, **counts},
            "outcomes": list(ehr.OUTCOMES)}


def test_cells_of_a_made_up_run():
    """A lone small category hides a second one of its variable; an outcome count equal to its variable's is hidden
    alike; a small split hides another in both columns."""
    metadata = made_up()
    manifest = [{"outcome_hospital_expire_flag": "0" if i < 96 else "", "outcome_icu_los_days": "1.5" if i < 40
                 else ""} for i in range(100)]
    cells = report_cxr_ehr.coverage_cells(metadata, manifest)
    assert cells[("coverage", "gender", "M")] == "<11" and cells[("coverage", "gender", "F")] == "suppressed"
    assert [cells[("coverage", "view", v)] for v in (*ehr.VIEWS, "missing")] == [60, 0, "suppressed", 0, "<11"]
    assert cells[("coverage", "orientation", "Erect")] == 100 and cells[("coverage", "age", "50-60")] == 100
    assert cells[("coverage", "admission", "no")] == "<11" == cells[("outcome", "outcome_hospital_expire_flag",
                                                                          "without")]
    assert cells[("coverage", "admission", "yes")] == "suppressed" == cells[("outcome", "outcome_hospital_expire_flag",
                                                                                "with")]
    assert cells[("outcome", "outcome_icu_los_days", "with")] == 40 == cells[("coverage", "icu", "yes")]
    rows = report_cxr_ehr.coverage_rows(metadata, manifest)
    assert ["gender", "M", "<11", "<11"] in rows and ["gender", "F", "suppressed", "suppressed"] in rows
    assert ["view", "PA", 60, 0.6] in rows
    assert report_cards.split_rows(metadata, "images") == [["train", 80, 30], ["val", "suppressed", "suppressed"],
                                                   ["test", "<11", "<11"], ["total", 100, 44]]
    no_outcomes = {**metadata, "outcomes": None}
    assert report_cxr_ehr.outcome_counts(no_outcomes, manifest) == {}
    assert "No outcomes written" in report_cxr_ehr.outcomes_part(no_outcomes, manifest)


def test_drop_reasons_are_placed_before_the_step_that_tests_them():
    assert report_cxr_ehr.FUNNEL.drop_steps() == {reason: "with a patients row, gender and age" for reason in ehr.DROPS}


def test_a_run_without_images_outcomes_or_feature_sets(ehr_run, tmp_path):
    """--images=false, no --include_outcomes, no --feature_sets, two views: the card says so; samples show the
    variables without a thumbnail."""
    output = ehr_run[0]
    config = ehr_run[1]["config"]
    plain = tmp_path / "plain"
    metadata = run(["--cohort=cxr_ehr", f"--mimic_cxr_root={config['mimic_cxr_root']}",
                    f"--mimic_iv_root={config['mimic_iv_root']}", f"--output={plain}", "--images=false",
                    "--views=AP,PA", "--ehr_match=date", ONE_WORKER])
    assert metadata["outcomes"] is None and output != plain
    index, page = card(plain, samples=1)
    text = index.read_text()
    rows = dict(page.tables["dataset"][1:])
    assert rows["outcomes (--include_outcomes)"] == "not written" and rows["images written"] == "no"
    assert rows["views"] == "AP, PA" and rows["EHR match (--ehr_match)"].startswith("date: ")
    assert "No outcomes written" in text and "outcomes" not in page.tables and "No feature CSVs written" in text
    assert f"Metadata rows of other views, not kept: {shown(metadata['counts']['images_other_view'])}." in text
    assert [row[1] for row in page.tables["coverage"] if row[0] == "view"] == [*ehr.VIEWS, "missing"]
    assert report.PHI_BANNER in text and "sample X-ray" not in text and "<p>no image</p>" in text
    assert "inside an admission: " in text and set(page.images) == {"funnel.png", "coverage.png"}
