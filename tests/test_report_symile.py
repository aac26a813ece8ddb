"""The symile_mimic data card: report.build dispatches on config["cohort"]; the card's funnel, lab coverage, ECG
checks and splits match metadata.json and the manifest; aggregate only by default, an ECG strip only with samples."""

from __future__ import annotations

import re

import pytest

from beam_pipeline import mimic, report, report_cards, report_symile, sample
from beam_pipeline.cohorts.symile_metadata import DROPS
from beam_pipeline.run import run
from card_checks import card, card_with_samples, hidden_ok, manifest_rows, shown
from conftest import ONE_WORKER

SECTIONS = ["funnel", "splits", "labs", "ecg", "candidates", "samples", "provenance"]
NOT_COUNTS = {"config", "versions", "windows", "image", "ecg-leads"}  # flags, versions, rules, settings, mV


@pytest.fixture(scope="module")
def symile_run(tmp_path_factory):
    """The sample tree (sample_hosp's admissions, labs and ECGs), its run with images and the default card."""
    base = tmp_path_factory.mktemp("report-symile")
    roots = sample.generate(base / "sample", subjects=200, seed=3)
    output = base / "out"
    metadata = run(["--cohort=symile_mimic", f"--mimic_cxr_root={roots.cxr}", f"--mimic_iv_root={roots.iv}",
                    f"--mimic_ecg_root={roots.ecg}", f"--output={output}", "--images=true", "--image_size=64",
                    "--split_fractions=0.7,0.15,0.15", ONE_WORKER])  # records in every split of a small sample
    # what run.main does after every run: aggregate only
    return output, metadata, manifest_rows(output), *card(output)


@pytest.fixture(scope="module")
def with_samples(symile_run):
    return card_with_samples(symile_run[0])


def test_the_run_has_something_to_show(symile_run):
    _, metadata, manifest, _, page = symile_run
    counts = metadata["counts"]
    assert metadata["config"]["cohort"] == "symile_mimic" and counts["matched"] == len(manifest) > 10
    assert any(1 <= n <= 10 for n in counts["dropped"].values()) and set(counts["ecg_checked"]) - {"usable"}
    assert "suppressed" in [row[1] for row in page.tables["funnel"]]  # a small drop beside a single other one


def test_funnel_steps_and_reasons_match_metadata(symile_run):
    _, metadata, _, index, page = symile_run
    counts = metadata["counts"]
    assert page.sections == SECTIONS
    rows = page.tables["funnel"][1:]
    steps = [row for row in rows if not row[0].startswith("− ")]
    assert steps == [[step, shown(n)] for step, n in metadata["funnel"].items()]  # the funnel's order
    removed = {row[0][2:]: row[1] for row in rows if row[0].startswith("− ")}
    expected = {**{f"dropped: {r}": n for r, n in counts["dropped"].items()},
                **{f"rejected: {r}": n for r, n in counts["rejected_by_reason"].items()}}
    assert set(removed) == set(expected)
    assert all(hidden_ok(cell, expected[name]) for name, cell in removed.items()), removed
    names = [row[0] for row in rows]
    assert names.index("− dropped: no_cxr_in_window") < names.index("with a CXR and its labels") < \
        names.index("− dropped: no_ecg_in_window") < names.index("with an ECG in window")
    assert names.index("− dropped: no_usable_ecg") < names.index("with a usable ECG") < names.index("written")
    assert all(names.index("with a usable ECG") < names.index(f"− rejected: {reason}") < names.index("written")
               for reason in counts["rejected_by_reason"])
    rejects = {row[0]: row[2] for row in page.tables["rejects"][1:]}
    assert rejects["total"] == shown(counts["rejects_total"]) and \
        set(rejects) == {*counts["rejects_by_stage_reason"], "total"}
    checks = {row[0]: row[1] for row in page.tables["ecg-checks"][1:]}
    assert set(checks) == {*counts["ecg_checked"], "total"} and \
        checks["total"] == shown(sum(counts["ecg_checked"].values()))
    assert (index.parent / "funnel.png").stat().st_size > 10_000


def test_drop_reasons_are_placed_before_the_step_that_tests_them():
    assert report_symile.FUNNEL.drop_steps() == {
        "no_cxr_in_window": "with a CXR and its labels", "no_chexpert_row": "with a CXR and its labels",
        "no_ecg_in_window": "with an ECG in window", "no_lab_in_window": "with a lab",
        "no_usable_ecg": "with a usable ECG"}
    assert set(report_symile.FUNNEL.drop_steps()) == set(DROPS)


def test_lab_coverage_splits_and_candidates(symile_run):
    _, metadata, manifest, _, page = symile_run
    counts, per_itemid = metadata["counts"], metadata["ecdf"]["per_itemid"]
    labs = page.tables["labs"][1:]
    assert len(labs) == 50 and [row[0] for row in labs] == [str(i) for i in mimic.SYMILE_LAB_ITEMIDS]
    assert all(row[1] for row in labs) and set(report_symile.LAB_NAMES) == set(mimic.SYMILE_LAB_ITEMIDS)
    for itemid, name, records, share, n_train, median in labs:
        n = counts["lab_coverage"][itemid]
        assert records == shown(n) and n_train == shown(per_itemid[itemid]["n_train_values"])
        assert share == ("<11" if 1 <= n <= 10 else f"{n / counts['matched']:.1%}")
        if per_itemid[itemid]["n_train_values"] > 10:
            assert float(median.replace(",", "")) == pytest.approx(per_itemid[itemid]["median"], rel=1e-3)
        else:
            assert median in ("–", "<11 values")
    for split, admissions, patients, images, ecgs in page.tables["splits"][1:]:
        rows = [r for r in manifest if r["split"] == split]
        assert admissions == shown(len(rows)) == shown(counts["per_split"][split])
        assert patients == shown(len({r["subject_id"] for r in rows})) == shown(counts["patients_per_split"][split])
        assert ecgs == shown(len({r["ecg_study_id"] for r in rows}))
    candidates = {row[0]: row[1:] for row in page.tables["candidates"][1:]}
    assert set(candidates) == {"val", "test"}
    assert candidates["val"][0] == shown(counts["candidates"]["queries"]["val"]) == shown(counts["per_split"]["val"])
    assert {row[0]: row[3] for row in page.tables["inputs"][1:]} == {k: v["sha256"]
                                                                     for k, v in metadata["inputs"].items()}


def test_default_card_is_aggregate_only(symile_run):
    _, metadata, manifest, index, page = symile_run
    text = index.read_text()
    assert report.PHI_BANNER not in text and 'id="aggregate"' in text and "--samples N" in text
    assert report_symile.ECG_STRIP not in page.images and not [src for src in page.images if src.startswith("sample")]
    record_ids = {r[column] for r in manifest for column in ("cxr_dicom_id", "hadm_id", "ecg_study_id", "ecg_path")}
    assert not [value for value in record_ids if value in text]
    small = [(name, row) for name, rows in page.tables.items() if name not in NOT_COUNTS
             for row in rows[1:] for cell in row[1:-1 if name == "labs" else None]  # not the median, a value
             if re.fullmatch(r"\d+", cell) and 1 <= int(cell) <= 10]
    assert not small, small  # not one count from 1 to 10 anywhere on the page
    assert any("<11" in cell for rows in page.tables.values() for row in rows for cell in row)
    assert "ecg-leads.png" in page.images and len(page.tables["ecg-leads"]) == 13  # aggregate over > 10 records
    assert all((index.parent / src).stat().st_size > 5_000 for src in page.images)


def test_samples_add_the_ecg_strip_under_the_banner(symile_run, with_samples):
    _, _, manifest, _, _ = symile_run
    index, page = with_samples
    text = index.read_text()
    assert text.index(report.PHI_BANNER) < text.index("<h1>") and "do not share" in text.split("</title>")[0]
    assert report_symile.ECG_STRIP in page.images and (index.parent / report_symile.ECG_STRIP).stat().st_size > 20_000
    first = next(split for split in report_cards.SAMPLE_SPLITS if any(r["split"] == split for r in manifest))
    shown_ids = re.findall(r'alt="sample X-ray ([0-9a-f-]+)"', text)
    assert len(shown_ids) == 1 and shown_ids[0] in {r["cxr_dicom_id"] for r in manifest if r["split"] == first}
    assert "ecg-leads" not in page.tables and "data use agreement" in text
