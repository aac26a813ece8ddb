"""The symile_mimic data card: report.build dispatches on config["cohort"]; the card's funnel, lab coverage, ECG
checks and splits match metadata.json and the manifest; aggregate only by default, an ECG strip only with samples."""

from __future__ import annotations

import re

import pytest

from beam_pipeline import mimic, report, report_cards, report_symile, sample
from beam_pipeline.cohorts.symile_metadata import DROPS
from beam_pipeline.run import run
from card_checks import (HIDDEN, card, card_with_samples, check_unit_funnel, edited_run, follows, hidden_ok,
                         manifest_rows, shown)
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
    """Each step, the next and the removals between them add up: the sample's single-reason steps (8 admissions
    without an ECG in the window, 2 without a lab, 1 without a usable ECG) were the differences of the shown steps
    around them, and no longer are (check_unit_funnel)."""
    _, metadata, _, index, page = symile_run
    counts = metadata["counts"]
    assert page.sections == SECTIONS
    names = check_unit_funnel(page, metadata)
    assert page.tables["funnel"][1] == ["admissions", shown(counts["admissions"])]  # the inputs' rows show it
    assert names.index("− dropped: no_cxr_in_window") < names.index("with a CXR and its labels") < \
        names.index("− dropped: no_ecg_in_window") < names.index("with an ECG in window")
    assert names.index("− dropped: no_usable_ecg") < names.index("with a usable ECG") < names.index("written")
    assert all(names.index("with a usable ECG") < names.index(f"− rejected: {reason}") < names.index("written")
               for reason in counts["rejected_by_reason"])
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
        n, fitted = counts["lab_coverage"][itemid], per_itemid[itemid]["n_train_values"]
        assert (records, share) == (("<11",) * 2 if 1 <= n <= 10 else (report_cards.ALL_BUT,) * 2
                                    if 1 <= counts["matched"] - n <= 10 else (shown(n), f"{n / counts['matched']:.1%}"))
        assert n_train == (report_cards.ALL_BUT if fitted > 10 and 1 <= counts["per_split"]["train"] - fitted <= 10
                           else shown(fitted))
        if per_itemid[itemid]["n_train_values"] > 10:
            assert float(median.replace(",", "")) == pytest.approx(per_itemid[itemid]["median"], rel=1e-3)
        else:
            assert median in ("–", "<11 values")
    splits = {row[0]: row[1:] for row in page.tables["splits"][1:]}
    assert page.tables["splits"][0] == ["split", "admissions", "X-ray images", "ECGs", "patients"]
    assert list(splits) == [*mimic.SPLITS, "total"] and splits["total"][0] == shown(counts["matched"])
    for split in mimic.SPLITS:
        rows = [r for r in manifest if r["split"] == split]
        expected = [len(rows), *(len({r[column] for r in rows}) for column in ("cxr_dicom_id", "ecg_study_id",
                                                                               "subject_id"))]
        assert all(hidden_ok(cell, n) for cell, n in zip(splits[split], expected)), (split, splits[split])
        assert expected[0] == counts["per_split"][split] and expected[3] == counts["patients_per_split"][split]
    candidates = {row[0]: row[1:] for row in page.tables["candidates"][1:]}
    assert set(candidates) == {"val", "test"}
    assert hidden_ok(candidates["val"][0], counts["candidates"]["queries"]["val"])
    assert counts["candidates"]["queries"]["val"] == counts["per_split"]["val"]
    assert {row[0]: row[3] for row in page.tables["inputs"][1:]} == {k: v["sha256"]
                                                                     for k, v in metadata["inputs"].items()}


@pytest.mark.parametrize("moved", ["none", "val to train"])
def test_no_split_count_follows_by_subtraction(symile_run, tmp_path, moved):
    """Each split column adds up to its total, the admissions to the written ones in the header: with one small split
    (the sample's val admission moved to train: 15, 0 and 5) the smallest other is hidden too. A split whose
    admissions are hidden has its candidate counts hidden with them: its queries are its admissions, and k
    negatives per query (fewer in a short set: q - 1 each) gave them back; so are the train values of each lab
    (one per train record) when the train admissions are hidden."""
    output, metadata = symile_run[:2]
    if moved != "none":
        def edit(metadata, manifest):
            for row in manifest:
                row["split"] = "train" if row["split"] == "val" else row["split"]
            for key, column in (("per_split", "hadm_id"), ("patients_per_split", "subject_id")):
                metadata["counts"][key] = {s: len({r[column] for r in manifest if r["split"] == s})
                                           for s in mimic.SPLITS}
            for key in ("queries", "negatives", "short_sets"):
                metadata["counts"]["candidates"][key]["val"] = 0
            metadata["outputs"]["candidates"]["val"]["records"] = 0

        output = edited_run(output, tmp_path / "run", edit)
        metadata = report.open_run(str(output))[1]
    _, page = card(output, target=str(tmp_path / "card"))
    header, *rows = page.tables["splits"]
    splits = {row[0]: row[1:] for row in rows}
    assert sum(1 <= n <= 10 for n in metadata["counts"]["per_split"].values()) == (2 if moved == "none" else 1)
    for split, *cells in page.tables["candidates"][1:]:
        if splits[split][0] in HIDDEN:
            assert cells == [splits[split][0]] * 4, (split, cells)
    for split in mimic.SPLITS:  # X-rays, ECGs and patients: no more than admissions, they would bound them
        assert splits[split][0] not in HIDDEN or all(cell in HIDDEN for cell in splits[split]), splits[split]
    if moved != "none":  # one train value per train record and itemid
        assert splits["train"][0] in HIDDEN
        assert {row[4] for row in page.tables["labs"][1:]} == {splits["train"][0]}
    assert not follows(shown(metadata["counts"]["matched"]), *(splits[s][0] for s in mimic.SPLITS))
    for i, column in enumerate(header[1:]):
        assert not follows(*(splits[s][i] for s in (*mimic.SPLITS, "total"))), column


def test_a_lab_in_all_but_a_few_records_is_not_counted():
    """The review's case: Hematocrit in 497 of the 500 written admissions and 396 of the 400 train ones gave the 3
    and the 4 without it by subtraction from the header and the split table; the medfuse and cxr_report cards
    already said "all but <11" for such a count (report_cards.of_total), and the figure does not draw it."""
    metadata = {"counts": {"matched": 500, "lab_coverage": {"51221": 497, "50912": 250, "50813": 4},
                           "per_split": {"train": 400, "val": 50, "test": 50},
                           "patients_per_split": {"train": 300, "val": 40, "test": 40}},
                "ecdf": {"per_itemid": {"51221": {"n_train_values": 396, "median": 38.1},
                                        "50912": {"n_train_values": 200, "median": 1.0},
                                        "50813": {"n_train_values": 3, "median": 2.0}}},
                "lab_itemids": [51221, 50912, 50813]}
    all_but = report_cards.ALL_BUT
    assert report_symile.lab_rows(metadata) == [["51221", "Hematocrit", all_but, all_but, all_but, "38.1"],
                                                ["50912", "Creatinine", 250, 0.5, 200, "1"],
                                                ["50813", "Lactate", "<11", "<11", "<11", "<11 values"]]
    assert report_symile.lab_figure_counts(metadata) == {f"Hematocrit ({all_but})": 0, "Creatinine": 250,
                                                         "Lactate": 4}


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
