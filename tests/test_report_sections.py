"""Tests of beam_pipeline.cohorts.report_sections: one synthetic report per rule of the MIT-LCP section parser (header
pattern, the skip rule, synonym/typo table, main-section and findings hints, empty drops, last_paragraph,
conclusion order, repeated sections), the cleaning of §D.3 (NOTIFICATION tail, underscores, whitespace), the target
and the 20-65 word filter edges."""

from __future__ import annotations

import pytest

from beam_pipeline.cohorts import report_sections as rs
from beam_pipeline.cohorts.report_sections import clean, conclusion, section_text, target, word_count, within_length

TITLE = " " * 33 + "FINAL REPORT"


def report(*lines: str, title: str = TITLE) -> str:
    """A MIMIC-like report: the title, then every line indented by one space ("" is a blank line: one space)."""
    return title + "\n" + "".join(f" {line}\n" for line in lines)


def named(text: str) -> list[tuple[str, str]]:
    """(name, stripped text) of every section."""
    return [(s.name, s.text.strip()) for s in section_text(text)]


def words(n: int, word: str = "clear") -> str:
    return " ".join([word] * n)


# --------------------------------------------------------------------------------------------------------------
# Header pattern


def test_header_is_newline_space_capitals_colon_whitespace() -> None:
    text = report("EXAMINATION:  CHEST (PA AND LAT)", "", "INDICATION:  ___F with cough.", "",
                  "FINDINGS:  Lungs are clear.", "", "IMPRESSION:", "", "No acute process.")
    sections = section_text(text)
    assert [s.name for s in sections] == ["preamble", "examination", "indication", "findings", "impression"]
    assert [s.header for s in sections] == ["", "EXAMINATION", "INDICATION", "FINDINGS", "IMPRESSION"]
    assert sections[0].text == TITLE + "\n "  # the preamble runs up to the header's first capital
    assert sections[3].text == " Lungs are clear.\n "  # one whitespace after the colon is the header's
    assert sections[4].text == " \n No acute process.\n"  # ... here the newline after "IMPRESSION:"
    for s in sections:
        assert text[s.start:s.start + len(s.text)] == s.text


@pytest.mark.parametrize("line", [
    "Heart size: normal.",  # lower-case letters before the colon
    "Lines and tubes: NG TUBE: tip in the stomach.",  # capitals with a colon, but not at the line start
    "PICC LINE 2: tip in the SVC.",  # a digit
    "IMPRESSION:unchanged.",  # no whitespace after the colon
])
def test_colon_inside_the_text_starts_no_section(line: str) -> None:
    text = report("FINDINGS:  Lungs are clear.", line, "No effusion.")
    assert named(text) == [("preamble", "FINAL REPORT"), ("findings", f"Lungs are clear.\n {line}\n No effusion.")]


def test_header_needs_newline_and_one_space_before_it() -> None:
    assert named("IMPRESSION:  No acute process.\n") == [("full report", "IMPRESSION:  No acute process.")]
    assert named(TITLE + "\nIMPRESSION:  No acute process.\n")[0][0] == "full report"  # no space after \n
    spaced = TITLE + "\n   IMPRESSION:  x\n"  # the run may start with spaces
    assert named(spaced) == [("preamble", "FINAL REPORT"), ("impression", "x")]
    assert section_text(spaced)[1].header == "  IMPRESSION"
    assert named(TITLE + "\n CHEST (PA/LAT), TWO-VIEW:  x\n")[1] == ("findings", "x")  # ( ) / , - are allowed


def test_header_line_without_body_swallows_the_next_line() -> None:
    """The search restarts at the first newline after the header's whitespace: when that whitespace is the newline
    itself, a header on the very next line is text (upstream's "skip past the first newline" rule)."""
    swallowed = report("FINDINGS:", "IMPRESSION:  No acute process.")
    assert named(swallowed) == [("preamble", "FINAL REPORT"), ("findings", "IMPRESSION:  No acute process.")]
    blank_line_between = report("FINDINGS:", "", "IMPRESSION:  No acute process.")
    assert named(blank_line_between) == [("preamble", "FINAL REPORT"), ("impression", "No acute process.")]
    same_line_body = report("FINDINGS:  Clear.", "IMPRESSION:  No acute process.")
    assert named(same_line_body) == [("preamble", "FINAL REPORT"), ("findings", "Clear."),
                                     ("impression", "No acute process.")]


# --------------------------------------------------------------------------------------------------------------
# Names


@pytest.mark.parametrize("header, name", [
    ("CONCLUSION", "impression"), ("FINDINGS AND IMPRESSION", "impression"), ("FINDINGS/IMPRESSION", "impression"),
    ("FINDINGS/ IMPRESSION", "impression"), ("IMPRESSON", "impression"), ("IMPESSION", "impression"),
    ("MPRESSION", "impression"), ("FINDNGS", "findings"), ("FINIDNGS", "findings"), ("FINDING", "findings"),
    ("COMPARISONS", "comparison"), ("COMPARISION", "comparison"), ("REFERENCE EXAM", "comparison"),
    ("REASON FOR EXAMINATION", "indication"), ("IDICATION", "indication"), ("CLINICAL HISTORY", "history"),
    ("PFI", "history"), ("EXAM", "examination"), ("CHEST, TWO VIEWS", "findings"),
    ("RECOMMENDATION(S)", "recommendations"), ("WETREAD", "wet read"), ("NOTIFICATION", "notification"),
    ("NDICATION", "impression"),  # upstream's table says so
])
def test_synonyms_and_typos(header: str, name: str) -> None:
    text = report("INDICATION:  Cough.", "", f"{header}:  Some text here.")
    assert named(text)[-1] == (name, "Some text here.")


def test_synonym_table_is_upstreams() -> None:
    assert len(rs.SECTION_SYNONYMS) == 58
    assert set(rs.SECTION_SYNONYMS.values()) == {
        "preamble", "impression", "comparison", "indication", "findings", "examination", "technique", "history",
        "notification", "recommendations", "addendum", "date", "comment", "wet read"}
    assert all(rs.normalise_name(key.upper()) == value for key, value in rs.SECTION_SYNONYMS.items())


@pytest.mark.parametrize("header, name", [
    ("IMPRESSION AND RECOMMENDATIONS", "impression"),  # the first main section contained wins ...
    ("FINDINGS AND HISTORY", "findings"),  # ... in upstream's order: impression, findings, history, ...
    ("HISTORY OF PRESENT ILLNESS", "history"),
    ("PRIOR COMPARISON STUDY", "comparison"),
    ("ADDENDUM TO REPORT", "addendum"),
    ("PA AND LATERAL VIEWS", "findings"),  # not a main section: the findings hints
    ("PORTABLE UPRIGHT FRONTAL", "findings"),
    ("RIBS (BILATERAL)", "findings"),
    ("CHEST (PA AND LAT)", "findings"),
    ("PROVIDER", "provider"),  # none of these: the lower-cased, stripped header
    ("INDICATION ", "indication"),  # stripped before the lookup
])
def test_main_sections_then_findings_hints(header: str, name: str) -> None:
    assert rs.normalise_name(header) == name
    assert named(report("INDICATION:  Cough.", "", f"{header}:  x"))[-1] == (name, "x")


# --------------------------------------------------------------------------------------------------------------
# Empty sections, last_paragraph


def test_empty_findings_and_impression_are_dropped_other_empty_sections_kept() -> None:
    text = report("CHEST, PA LATERAL:", "", "INDICATION:  Cough.", "", "COMPARISON:", "", "FINDINGS:  ", "",
                  "FINDINGS:  Lungs are clear.", "", "IMPRESSION:", "")
    assert named(text) == [("preamble", "FINAL REPORT"), ("indication", "Cough."), ("comparison", ""),
                           ("findings", "Lungs are clear.")]


def test_last_paragraph_is_everything_after_the_first_blank_line() -> None:
    text = report("PA and lateral views of the chest.", "", "The lungs are clear.", "No effusion.", "",
                  "No acute process.")
    sections = section_text(text)
    assert named(text) == [("full report", "FINAL REPORT\n PA and lateral views of the chest."),
                           ("last_paragraph", "The lungs are clear.\n No effusion.\n \n No acute process.")]
    tail = sections[-1]
    assert text[tail.start:tail.start + len(tail.text)] == tail.text == text[text.index("\n \n") + 3:]
    assert conclusion(sections) == "The lungs are clear.\n No effusion.\n \n No acute process."


def test_last_paragraph_needs_a_line_of_one_space() -> None:
    text = TITLE + "\n PA and lateral views.\n\n The lungs are clear.\n"  # an empty line is no paragraph break
    assert [s.name for s in section_text(text)] == ["full report"]
    assert conclusion(section_text(text)) == ""


def test_last_paragraph_cuts_the_last_section_only_without_findings_or_impression() -> None:
    text = report("INDICATION:  Cough.", "", "Second indication paragraph.", "", "COMPARISON:  ___.", "",
                  "The lungs are clear.", "", "No acute process.")
    assert named(text) == [("preamble", "FINAL REPORT"), ("indication", "Cough.\n \n Second indication paragraph."),
                           ("comparison", "___."),
                           ("last_paragraph", "The lungs are clear.\n \n No acute process.")]
    with_findings = report("FINDINGS:  Clear.", "", "COMPARISON:  ___.", "", "Later paragraph.")
    assert [s.name for s in section_text(with_findings)] == ["preamble", "findings", "comparison"]


def test_a_dropped_empty_findings_section_lets_last_paragraph_in() -> None:
    text = report("FINDINGS:", "", "COMPARISON:  ___.", "", "The lungs are clear.")
    assert named(text) == [("preamble", "FINAL REPORT"), ("comparison", "___."),
                           ("last_paragraph", "The lungs are clear.")]


# --------------------------------------------------------------------------------------------------------------
# Conclusion, repeated sections


@pytest.mark.parametrize("lines, expected", [
    (("COMPARISON:  ___.", "", "FINDINGS:  F.", "", "IMPRESSION:  I.", "", "RECOMMENDATION(S):  R."), "I."),
    (("COMPARISON:  ___.", "", "FINDINGS:  F.", "", "RECOMMENDATION(S):  R."), "F."),
    (("COMPARISON:  C.", "", "Paragraph two."), "Paragraph two."),  # last_paragraph before comparison
    (("INDICATION:  Cough.", "", "COMPARISON:  C."), "C."),
    (("INDICATION:  Cough.", "", "TECHNIQUE:  PA."), ""),
])
def test_conclusion_order(lines: tuple[str, ...], expected: str) -> None:
    assert conclusion(section_text(report(*lines))) == expected


def test_repeated_sections_take_the_last() -> None:
    text = report("FINDINGS:  First findings.", "", "IMPRESSION:  First impression.", "", "FINDINGS:  Second findings.",
                  "", "IMPRESSION:  Second impression.", "", "COMPARISON:  C1.", "", "COMPARISON:  C2.")
    sections = section_text(text)
    assert rs.findings(sections) == "Second findings." and rs.impression(sections) == "Second impression."
    assert conclusion(sections) == "Second impression."
    assert rs.sectioned(sections) == {"impression": "Second impression.", "findings": "Second findings.",
                                      "last_paragraph": None, "comparison": "C2."}
    assert rs.last_section(sections, "impression").start == text.rindex("Second impression.") - 1


def test_missing_sections_are_empty() -> None:
    sections = section_text(report("INDICATION:  Cough."))
    assert rs.findings(sections) == rs.impression(sections) == conclusion(sections) == ""
    assert rs.conclusion_section(sections) is None


# --------------------------------------------------------------------------------------------------------------
# Cleaning and target


def test_clean_cuts_from_notification_on() -> None:
    assert clean("No acute process.  NOTIFICATION:  Discussed with Dr. ___.") == "No acute process."
    assert clean("A. NOTIFICATION: b. NOTIFICATION: c.") == "A."
    assert clean("Notification: lower case stays.") == "Notification: lower case stays."  # case-sensitive


def test_clean_deletes_underscores_and_collapses_whitespace() -> None:
    assert clean(" Compared to ___, the\n study of __ \t on _ is  unchanged. \n") == (
        "Compared to , the study of on is unchanged.")
    assert clean("___\n ______________________________\n ") == ""
    assert word_count(clean("Compared to ___, no change.")) == 5  # the lone comma counts, as in the original


def test_target_is_cleaned_findings_then_impression() -> None:
    text = report("COMPARISON:  ___.", "", "FINDINGS:  Lungs are", "  clear  since ___.", "",
                  "IMPRESSION:  No acute process.  NOTIFICATION:  Dr. ___ was paged.")
    assert target(text) == ("Lungs are clear since .", "No acute process.",
                            "Lungs are clear since . No acute process.")
    assert target(report("IMPRESSION:  Only this.")) == ("", "Only this.", "Only this.")
    assert target(report("FINDINGS:  Only this.")) == ("Only this.", "", "Only this.")
    assert target(report("No headers here.", "", "Second paragraph.")) == ("", "", "")


def test_notification_section_never_enters_the_target() -> None:
    after = report("FINDINGS:  F.", "", "IMPRESSION:  I.", "", "NOTIFICATION:  Called Dr. ___.")
    before = report("FINDINGS:  F.", "", "NOTIFICATION:  Called Dr. ___.", "", "IMPRESSION:  I.")
    assert target(after)[2] == target(before)[2] == "F. I."  # the original's report-wide cut would lose "I." here


def test_decode_turns_carriage_returns_into_newlines() -> None:
    text = rs.decode(b"  FINAL REPORT\r\n FINDINGS:  F.\r\n \r\n IMPRESSION:  I.\r")
    assert text == "  FINAL REPORT\n FINDINGS:  F.\n \n IMPRESSION:  I.\n"
    assert target(text)[2] == "F. I."


@pytest.mark.parametrize("n, kept", [(19, False), (20, True), (65, True), (66, False), (0, False)])
def test_length_filter_edges(n: int, kept: bool) -> None:
    findings = words(n - min(n, 5))
    impression = words(min(n, 5), "stable")
    text = report(*([f"FINDINGS:  {findings}", ""] if findings else []), f"IMPRESSION:  {impression}")
    assert word_count(target(text)[2]) == n
    assert within_length(word_count(target(text)[2])) is kept


def test_length_filter_bounds_are_parameters() -> None:
    assert within_length(10, low=10, high=10) and not within_length(11, low=10, high=10)
    assert (rs.MIN_WORDS, rs.MAX_WORDS) == (20, 65)
