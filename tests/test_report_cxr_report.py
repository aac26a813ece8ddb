"""The cxr_report data card: report.build dispatches on config["cohort"]; the funnel, splits, target word-count
histogram, section coverage and label status match metadata.json and the manifest under the small-cell rules (and
their complementary suppression); aggregate only by default (no ids, no report text), a record's thumbnail and
target text only with samples."""

from __future__ import annotations

import html
import json
import re

import pytest

from beam_pipeline import mimic, report, report_cards, report_cxr_report, sample
from beam_pipeline.cohorts import cxr_report, report_sections
from beam_pipeline.run import run
from card_checks import (HIDDEN, card, card_with_samples, check_unit_funnel, hidden_ok, manifest_rows, share_ok,
                         shown)
from conftest import ONE_WORKER, published

SECTIONS = ["dataset", "funnel", "splits", "words", "sections", "labels", "processing", "samples", "provenance"]
NOT_COUNTS = {"dataset", "processing", "config", "versions", "inputs", "image"}  # flags, versions, rules, values


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """One run in process (reports from the sample tree), its default card and one with a sample: (metadata,
    manifest, targets by dicom_id, index, page, index with samples, its page)."""
    base = tmp_path_factory.mktemp("report-cxr-report")
    roots = sample.generate(base / "sample", subjects=120, seed=5)
    output = base / "out"
    metadata = run(["--cohort=cxr_report", f"--mimic_cxr_root={roots.cxr}", f"--mimic_cxr_reports={roots.cxr}",
                    f"--output={output}", "--image_size=32", ONE_WORKER])
    targets = {}
    for path in sorted((published(output) / "instructions").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            example = json.loads(line)
            targets[example["id"]] = example["messages"][1]["content"][0]["text"]
    # the default card (what run.main does after every run: aggregate only), then one with a sample
    return metadata, manifest_rows(output), targets, *card(output), *card_with_samples(output)


def test_card_is_registered_and_has_its_sections(reported):
    metadata, manifest, _, index, page, _, _ = reported
    assert report.CARDS["cxr_report"] == "beam_pipeline.report_cxr_report"
    assert metadata["config"]["cohort"] == "cxr_report" and metadata["counts"]["matched"] == len(manifest) > 10
    assert page.sections == SECTIONS and metadata["dataset"] in index.read_text()
    rows = dict(page.tables["dataset"][1:])
    assert rows["cohort"] == "cxr_report" and rows["views"] == "PA"
    assert rows["target length (--min_words, --max_words)"] == "20 to 65 words, both included"
    assert set(page.images) == {"funnel.png", "words.png", "sections.png"}
    assert all((index.parent / src).stat().st_size > 5_000 for src in page.images)
    processing = dict(page.tables["processing"][1:])
    assert processing["parser"] == metadata["report"]["parser"]
    assert processing["cleaning"] == metadata["report"]["cleaning"]
    assert processing["instruction (user turn)"] == metadata["config"]["instruction"]


def test_funnel_steps_and_reasons_match_metadata(reported):
    metadata, _, _, _, page, _, _ = reported
    counts = metadata["counts"]
    names = check_unit_funnel(page, metadata)
    assert list(metadata["funnel"]) == [
        "studies with a kept-view image", "with findings or impression", "target within the word limits",
        "first of its subject (--one_per_subject)", "written"]
    assert set(counts["dropped"]) == set(cxr_report.DROPS)
    # the sample's report files that are missing or empty: rejects with their line, not drops
    assert {"report/missing_report", "report/empty_report"} <= set(counts["rejected_by_reason"])
    for reason, step in (("no_findings_or_impression", "with findings or impression"),
                         ("target_too_short", "target within the word limits"),
                         ("target_too_long", "target within the word limits"),
                         ("not_first_of_subject", "first of its subject (--one_per_subject)")):
        i = names.index(f"− dropped: {reason}")  # removed just before its step
        assert next(name for name in names[i:] if not name.startswith("− ")) == step, reason
    assert all(names.index("first of its subject (--one_per_subject)") < names.index(f"− rejected: {r}") <
               names.index("written") for r in counts["rejected_by_reason"])


def test_the_sample_has_something_to_hide(reported):
    """The sample holds small drops, bins and sections, and a lone small cell beside others, so the rules work."""
    page = reported[4]
    cells = [cell for rows in page.tables.values() for row in rows for cell in row]
    assert "<11" in [row[1] for row in page.tables["funnel"]] and "suppressed" in cells
    assert "<11" in [row[1] for row in page.tables["sections"]]


def test_splits(reported):
    metadata, manifest, _, _, page, _, _ = reported
    counts = metadata["counts"]
    rows = {row[0]: row[1:] for row in page.tables["splits"][1:]}
    assert list(rows) == [*mimic.SPLITS, "total"]
    for split in mimic.SPLITS:
        studies, patients = rows[split]
        records = [r for r in manifest if r["split"] == split]
        assert len(records) == counts["per_split"][split] == metadata["outputs"]["instructions"][split]["records"]
        assert len({r["subject_id"] for r in records}) == counts["patients_per_split"][split]
        assert hidden_ok(studies, len(records)) and hidden_ok(patients, counts["patients_per_split"][split])
    assert rows["total"][0] == shown(counts["matched"])
    assert hidden_ok(rows["total"][1], sum(counts["patients_per_split"].values()))
    for column in (0, 1):  # a column and its total
        assert sum(rows[s][column] in HIDDEN for s in (*mimic.SPLITS, "total")) != 1


def test_word_count_histogram(reported):
    metadata, manifest, _, _, page, _, _ = reported
    matched = metadata["counts"]["matched"]
    rows = {row[0]: row[1:] for row in page.tables["words"][1:]}
    assert rows.pop("total") == [shown(matched), "100.0%"]
    # default limits 20-65: the bins the limits allow, cut to them
    assert list(rows) == ["20–29", "30–39", "40–49", "50–64", "65"]
    words = [int(r["target_words"]) for r in manifest]
    assert min(words) >= 20 and max(words) <= 65
    for name, (cell, share) in rows.items():
        low, high = (int(x) for x in (name.split("–") if "–" in name else (name, name)))
        n = sum(low <= w <= high for w in words)
        assert n == metadata["counts"]["target_words"].get(f"{max(b for b in cxr_report.WORD_BUCKETS if b <= low):03d}",
                                                           0)
        assert hidden_ok(cell, n) and share_ok(share, cell, n, matched), name
    assert sum(cell in HIDDEN for cell, _ in rows.values()) != 1
    assert any(cell in HIDDEN for cell, _ in rows.values())  # the sample has a small bin (65 words)


def test_word_bins_follow_the_limits():
    metadata = {"report": {"words": [5, 200]}, "counts": {"matched": 40, "target_words": {
        "000": 3, "010": 20, "100": 12, "150": 5}}}
    assert report_cxr_report.word_bins(metadata) == {
        "5–9": 3, "10–19": 20, "20–29": 0, "30–39": 0, "40–49": 0, "50–64": 0, "65–79": 0, "80–99": 0,
        "100–149": 12, "150–200": 5}
    assert report_cxr_report.word_rows(metadata)[0] == ["5–9", "<11", "<11"]
    assert report_cxr_report.word_rows(metadata)[-1] == ["total", 40, 1.0]
    rows = report_cxr_report.word_rows({**metadata, "report": {"words": [20, 65]}})  # bins outside the limits
    assert [row[0] for row in rows] == ["0–9", "10–19", "20–29", "30–39", "40–49", "50–64", "65", "100–149",
                                        "≥ 150", "total"]  # are kept when they hold studies (none should)


def test_section_coverage(reported):
    metadata, manifest, _, _, page, _, _ = reported
    coverage, matched = metadata["counts"]["section_coverage"], metadata["counts"]["matched"]
    rows = page.tables["sections"][1:]
    named = {row[0]: row[1:] for row in rows if not row[0].endswith("not shown")}
    assert set(named) == {name for name, n in coverage.items()
                          if name in report_sections.KNOWN_SECTIONS or not 1 <= n <= 10}
    assert {"preamble", "findings", "impression"} <= set(named)
    for name, (studies, share, source) in named.items():
        n = coverage[name]
        assert n == sum(name in r["sections"].split(";") for r in manifest)  # the manifest agrees
        if 1 <= n <= 10:
            assert studies == share == "<11"
        elif 1 <= matched - n <= 10:
            assert studies == share == report_cards.ALL_BUT
        else:
            assert studies == shown(n) and share == f"{n / matched:.1%}"
        assert source == ("parser" if name in report_sections.KNOWN_SECTIONS else "a report header")
    counts = [coverage[name] for name in named]
    assert counts == sorted(counts, reverse=True)  # most frequent first


def test_rare_report_headers_are_not_named():
    metadata = {"counts": {"matched": 100, "section_coverage": {
        "findings": 95, "impression": 60, "addendum": 2, "wet read": 0, "chest two views": 30, "dr smith": 1,
        "portable film": 3}}}
    rows = report_cxr_report.section_rows(metadata)
    assert rows == [["findings", report_cards.ALL_BUT, report_cards.ALL_BUT, "parser"],
                    ["impression", 60, 0.6, "parser"], ["chest two views", 30, 0.3, "a report header"],
                    ["addendum", "<11", "<11", "parser"], ["wet read", 0, 0.0, "parser"],
                    ["<11 other names, not shown", "<11 each", "", "reports' own headers"]]
    assert "dr smith" not in report_cxr_report.section_figure_counts(metadata)


def test_label_status(reported):
    metadata, manifest, _, _, page, _, _ = reported
    matched = metadata["counts"]["matched"]
    rows = {row[0]: row[2:] for row in page.tables["labels"][1:]}
    assert list(rows) == ["labeled", "all_blank", "no_label_row", "total"]
    assert rows.pop("total") == [shown(matched), "100.0%"]
    for status, (cell, share) in rows.items():
        n = sum(r["labels_status"] == status for r in manifest)
        assert n == metadata["counts"]["labels"].get(status, 0)
        assert hidden_ok(cell, n) and share_ok(share, cell, n, matched)
    assert sum(cell in HIDDEN for cell, _ in rows.values()) != 1


def test_default_card_is_aggregate_only(reported):
    metadata, manifest, targets, index, page, _, _ = reported
    text = index.read_text()
    assert report.PHI_BANNER not in text and 'id="aggregate"' in text and "--samples N" in text
    assert not [src for src in page.images if src.startswith("sample")]
    record_ids = {r[column] for r in manifest for column in ("subject_id", "study_id", "dicom_id")}
    assert not [value for value in record_ids if value in text]
    assert len(targets) == len(manifest)
    plain = html.unescape(text)
    sentences = {s.strip() for t in targets.values() for s in re.split(r"(?<=\.) ", t) if len(s.split()) >= 4}
    assert sentences and not [s for s in sentences if s in plain]  # no report text at all
    small = [(name, row) for name, rows in page.tables.items() if name not in NOT_COUNTS
             for row in rows[1:] for cell in row[1:] if re.fullmatch(r"\d+", cell) and 1 <= int(cell) <= 10]
    assert not small, small  # not one count from 1 to 10 anywhere on the page


def test_samples_add_a_thumbnail_and_the_target_under_the_banner(reported):
    _, manifest, targets, _, _, index, page = reported
    text = index.read_text()
    assert text.index(report.PHI_BANNER) < text.index("<h1>") and "do not share" in text.split("</title>")[0]
    shown_ids = re.findall(r'alt="sample X-ray ([0-9a-f-]+)"', text)
    first = next(s for s in report_cards.SAMPLE_SPLITS if any(r["split"] == s for r in manifest))
    assert len(shown_ids) == 1 and shown_ids[0] in {r["dicom_id"] for r in manifest if r["split"] == first}
    assert "sample-00.png" in page.images and (index.parent / "sample-00.png").stat().st_size > 1_000
    assert html.escape(targets[shown_ids[0]]) in text  # the record's target, as written
    assert len(re.findall('class="target"', text)) == 1 and "data use agreement" in text
