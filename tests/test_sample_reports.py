"""Tests of the sample's MIMIC-CXR reports (beam_pipeline.sample_reports): files where SAMPLE.json's "reports" section
says, in the release's layout and format; the expected word counts (known by construction) agree with
cohorts.report_sections reading the files; the header variety and the length edges are there; determinism; every
other file of the tree byte-identical."""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import pytest

from beam_pipeline import mimic, sample, sample_reports
from beam_pipeline.cohorts import report_sections as rs
from cohort_files import table_rows

PATH = re.compile(r"files/p(\d\d)/p(\d{8})/s(\d{8})\.txt")


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> sample.SampleRoots:
    return sample.generate(tmp_path_factory.mktemp("reports"), subjects=40, seed=0)


@pytest.fixture(scope="module")
def section(roots) -> dict:
    return json.loads((Path(roots.cxr).parent / "SAMPLE.json").read_text())["reports"]


@pytest.fixture(scope="module")
def reports(roots) -> dict[str, str]:
    """Every report file: path relative to the CXR root -> text."""
    root = Path(roots.cxr)
    return {str(p.relative_to(root)): p.read_text(encoding="ascii") for p in sorted(root.rglob("*.txt"))}


def test_one_report_per_study_where_the_manifest_says(roots, section, reports) -> None:
    studies = {(int(r["subject_id"]), int(r["study_id"])) for r in table_rows(roots.cxr, mimic.CXR_METADATA)}
    missing = {c["path"] for c in section["cases"] if c["expected"] is None}
    assert len(missing) == 2
    expected = {mimic.report_path(subject, study) for subject, study in studies}
    assert set(reports) == expected - missing
    for path in reports:
        first_two, subject, study = PATH.fullmatch(path).groups()
        assert subject[:2] == first_two and (Path(roots.cxr) / path).with_suffix("").is_dir()  # beside the images
    assert section["counts"]["studies"] == len(studies)
    assert section["counts"]["reports"] == len(reports) == len(section["target_words"])
    assert section["counts"]["studies_without_report"] == 2
    assert {f"files/p{str(c['subject_id'])[:2]}/p{c['subject_id']}/s{c['study_id']}.txt" for c in section["cases"]} \
        == {c["path"] for c in section["cases"]}


def test_release_format(reports) -> None:
    for text in filter(None, reports.values()):  # the empty_report_file case is 0 bytes
        lines = text.split("\n")
        assert text.endswith("\n") and lines[-1] == "" and "\r" not in text
        assert all(len(line) <= 79 and (line == "" or line.startswith(" ")) for line in lines)
        assert "FINAL REPORT" in lines[0] or "FINAL ADDENDUM" in lines[0]
        assert "\n\n" not in text  # blank lines hold one space


def test_every_case_is_planted_on_a_pa_study_without_other_cases(roots, section) -> None:
    assert [c["case"] for c in section["cases"]] == sorted(sample_reports.REPORT_CASES)
    assert all(c["has_pa"] for c in section["cases"])
    others = {c["study_id"] for c in json.loads((Path(roots.cxr).parent / "SAMPLE.json").read_text())["cases"]}
    assert not others & {c["study_id"] for c in section["cases"]}
    assert len({c["study_id"] for c in section["cases"]}) == len(section["cases"])


def test_expectations_agree_with_the_parser(section, reports) -> None:
    """The counts written by construction are what report_sections reads from the files."""
    for path, text in reports.items():
        study = PATH.fullmatch(path).group(3)
        assert rs.word_count(rs.target(text)[2]) == section["target_words"][study], path
    for case in section["cases"]:
        if case["expected"] is None:
            continue
        sections = rs.section_text(reports[case["path"]])
        found, said, target = rs.target_of(sections)
        chosen = rs.conclusion_section(sections)
        assert case["expected"] == {
            "findings_words": rs.word_count(found), "impression_words": rs.word_count(said),
            "target_words": rs.word_count(target), "within_length": rs.within_length(rs.word_count(target)),
            "conclusion_from": chosen.name if chosen else "",
            "conclusion_words": rs.word_count(rs.conclusion(sections)),
        }, case["case"]
    counts, words = section["counts"], section["target_words"].values()
    assert counts["with_target"] == sum(n > 0 for n in words)
    assert counts["target_within_length"] == sum(rs.within_length(n) for n in words)


def test_cases_are_what_their_names_say(section, reports) -> None:
    cases = {c["case"]: c for c in section["cases"]}
    text = {name: reports[c["path"]] for name, c in cases.items() if c["expected"]}
    expected = {name: c["expected"] for name, c in cases.items() if c["expected"]}
    for name, header in (("conclusion_header", "CONCLUSION:"), ("findings_and_impression_header",
                                                                 "FINDINGS AND IMPRESSION:"),
                         ("findings_slash_impression_header", "FINDINGS/IMPRESSION:"),
                         ("chest_two_views_header", "CHEST, TWO VIEWS:"),
                         ("study_description_header", "PA AND LATERAL VIEWS OF THE CHEST:")):
        assert f"\n {header}" in text[name]
    assert "\n FINDNGS:" in text["typo_headers"] and "\n IMPRESSON:" in text["typo_headers"]
    assert [s.name for s in rs.section_text(text["no_headers"])] == ["full report", "last_paragraph"]
    assert expected["no_headers"]["target_words"] == 0 and expected["no_headers"]["conclusion_words"] > 0
    assert expected["comparison_only"]["conclusion_from"] == "comparison"
    assert text["repeated_impression"].count("\n IMPRESSION:") == 2
    assert text["repeated_findings"].count("\n FINDINGS:") == 2
    assert "\n FINDINGS:\n \n IMPRESSION:" in text["empty_findings_section"]
    assert "\n CHEST (PA AND LAT):\n \n" in text["empty_title_header"]
    assert "NOTIFICATION:" in rs.impression(rs.section_text(text["notification_inline"]))  # cut by clean only
    assert "\n NOTIFICATION:" in text["notification_section"]
    assert text["notification_before_impression"].index("NOTIFICATION:") < text[
        "notification_before_impression"].index("IMPRESSION:")
    assert "___" in rs.findings(rs.section_text(text["deid_marks"]))
    assert "\n Heart size: normal." in text["colons_inside_text"] and "NG TUBE:" in text["colons_inside_text"]
    assert "_" * 78 in text["addendum_on_top"]
    assert text["empty_report_file"] == "" and expected["empty_report_file"]["target_words"] == 0
    assert {n: expected[f"target_{n}_words"]["target_words"] for n in (19, 20, 65, 66)} == {
        19: 19, 20: 20, 65: 65, 66: 66}
    assert [expected[f"target_{n}_words"]["within_length"] for n in (19, 20, 65, 66)] == [False, True, True, False]


def test_header_variety_beyond_the_planted_cases(section, reports) -> None:
    planted = {c["path"] for c in section["cases"]}
    ordinary = [text for path, text in reports.items() if path not in planted]
    names = [set(rs.names(rs.section_text(text))) for text in ordinary]
    assert any("impression" in n and "findings" in n for n in names)
    assert any("impression" in n and "findings" not in n for n in names)
    assert any("findings" in n and "impression" not in n for n in names)
    assert any("history" in n for n in names) and any("examination" in n for n in names)
    assert sum("___" in text for text in ordinary) > len(ordinary) / 2
    words = list(section["target_words"].values())
    assert min(words) < 20 and max(words) > 65 and section["counts"]["target_within_length"] > len(words) / 2


def digest(root: Path, skip_reports: bool = False) -> dict[str, str]:
    return {name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and (name := str(p.relative_to(root))) != "SAMPLE.json"
            and not (skip_reports and PATH.search(name))}


def test_deterministic_and_the_other_files_are_unchanged(tmp_path, monkeypatch) -> None:
    """Two generations are byte-identical; one with this step replaced by nothing has every other file
    byte-identical and the same SAMPLE.json apart from its "reports" section."""
    first, again = (Path(sample.generate(tmp_path / name, subjects=12, seed=4).cxr).parent for name in "ab")
    assert digest(first) == digest(again)
    assert (first / "SAMPLE.json").read_bytes() == (again / "SAMPLE.json").read_bytes()
    monkeypatch.setattr(sample_reports, "write", lambda world, roots, seed: {})
    without = Path(sample.generate(tmp_path / "c", subjects=12, seed=4).cxr).parent
    assert not list(without.rglob("*.txt"))
    assert digest(without) == digest(first, skip_reports=True)
    manifests = [json.loads((folder / "SAMPLE.json").read_text()) for folder in (first, without)]
    assert manifests[0].pop("reports")["cases"] and manifests[1].pop("reports") == {}
    assert manifests[0] == manifests[1]


def test_another_seed_gives_other_reports(tmp_path) -> None:
    world = sample._synthetic_world(random.Random(3), 10)
    texts = []
    for seed in (1, 1, 2):
        roots = sample.SampleRoots(str(tmp_path / f"s{seed}-{len(texts)}"), "", "")
        section = sample_reports.write(world, roots, seed)
        texts.append((section, {p.name: p.read_bytes() for p in Path(roots.cxr).rglob("*.txt")}))
    assert texts[0] == texts[1] and texts[0][1] != texts[2][1]
    assert set(texts[0][1]) | {f"s{c['study_id']}.txt" for c in texts[0][0]["cases"] if c["expected"] is None} \
        == {f"s{s.study_id}.txt" for s in world.studies}
