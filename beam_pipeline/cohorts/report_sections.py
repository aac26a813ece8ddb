"""MIMIC-CXR free-text reports: sections, the findings + impression target, cleaning and the length filter.

Pure functions, no I/O. Sectioning re-implements the rules of the MIT-LCP parser (github.com/MIT-LCP/mimic-cxr,
``txt/section_parser.py`` and ``txt/create_section_files.py``; cohort-definitions.md §E) in this module's own words;
the synonym/typo table below is that parser's data, reproduced entry by entry:

1. **Headers** (``section_parser.section_text``): a section starts at a newline, one space and a run of
   ``[A-Z ()/,-]`` characters ending in a colon followed by one whitespace character (``HEADER``). Lower-case
   letters, digits or a missing newline + space before the run keep a colon inside the text (``Heart size: normal``,
   ``... as before. IMPRESSION: x``). A header at offset 0 (no newline before it) is no header. The text before the
   first header is the ``preamble``; a report with no header at all is one ``full report`` section.
2. **Skip rule**: the search for the next header starts at the first newline *after* the whitespace the header
   consumed. So a header whose own line is empty (``FINDINGS:`` then a newline) cannot be followed by a header on
   the very next line: that one is read as text of the first (upstream does this "to avoid some bad parses").
3. **Names** (``normalize_section_names``): lower-cased and stripped; looked up in ``SECTION_SYNONYMS``; else the
   first of ``MAIN_SECTIONS`` contained in the name (``impression and recommendation`` -> impression); else, if the
   name contains one of ``FINDINGS_HINTS`` (``chest``, ``pa and lateral``, ...), ``findings``; else kept as is.
4. **Empty drop**: impression and findings sections whose text is only whitespace are removed (a title such as
   ``CHEST, PA LATERAL:`` directly followed by another header; a second, empty findings section).
5. **last_paragraph** (still ``section_text``): when no impression and no findings section remains and the last
   section contains a ``"\\n \\n"`` paragraph break (newline, one space, newline: MIMIC's blank line), that section
   is cut at its *first* such break: the first part keeps its name, everything after the break becomes a
   ``last_paragraph`` section (upstream's name notwithstanding, that is all the following paragraphs).
6. **Conclusion** (``create_section_files.main``): the text of the *last* section named impression, else the last
   findings, else the last last_paragraph, else the last comparison, stripped; ``""`` when there is none. The
   ``mimic_cxr_sectioned.csv`` row (``sectioned``) takes the last section of each of those four names the same way.

Deliberate differences from upstream:

- Not reproduced: ``custom_mimic_cxr_rules`` (23 per-study section-name overrides and 31 per-study character-span
  overrides, 8 of them "no findings at all"). They are fixes for individual real reports, keyed by real study ids,
  which synthetic data cannot exercise; a build on the real release differs from upstream's CSVs on those 54
  studies only.
- ``Section.start`` of a ``last_paragraph`` is the offset of its first character; upstream's index points at the
  paragraph break three characters earlier. Every section satisfies ``text[start:start + len(section.text)] ==
  section.text``.
- Upstream reads files in text mode, which turns ``\\r\\n`` and ``\\r`` into ``\\n``; ``decode`` does the same for
  bytes read from a file, zip member or object store. ``section_text`` itself takes the text as given.

Target text (cohort-definitions.md §D.3, ``Text_Generation/Loading_and_Training.ipynb`` of FRHsieh/MIMIC-CXR):
``clean`` cuts everything from the first ``NOTIFICATION:`` (case-sensitive) on, deletes every underscore (MIMIC's
``___`` de-identification marks and the underscore lines above addenda) and collapses whitespace; the target is the
cleaned findings, a space and the cleaned impression, trimmed; ``word_count`` splits on whitespace and
``within_length`` keeps 20 <= n <= 65 words (60 + 5 "grace") by default. The original cut the whole report at
``NOTIFICATION:`` before splitting it at ``FINDINGS:`` / ``IMPRESSION:`` strings; here the MIT sections come first
and each is cleaned on its own, so a ``NOTIFICATION:`` header is a section of its own that never enters the target
(and no longer swallows an impression written after it), and an inline ``NOTIFICATION:`` ends only its section.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Sequence

HEADER = re.compile(r"\n ([A-Z ()/,-]+):\s")
PARAGRAPH_BREAK = "\n \n"
PREAMBLE, FULL_REPORT, LAST_PARAGRAPH = "preamble", "full report", "last_paragraph"
CONCLUSION_ORDER = ("impression", "findings", LAST_PARAGRAPH, "comparison")  # create_section_files.main
NOTIFICATION = "NOTIFICATION:"
MIN_WORDS, MAX_WORDS = 20, 65  # the original's filter: 60 words + 5 "grace", both ends inclusive

# Header name (lower case) -> normalised name. Data from MIT-LCP/mimic-cxr txt/section_parser.py,
# normalize_section_names() ``frequent_sections`` (commit 3190146), in upstream's order; the trailing numbers are
# upstream's comments: how often the header occurs in MIMIC-CXR (blank where upstream gives none).
SECTION_SYNONYMS: dict[str, str] = dict((
    ("preamble", "preamble"),  # 227885
    ("impression", "impression"),  # 187759
    ("comparison", "comparison"),  # 154647
    ("indication", "indication"),  # 153730
    ("findings", "findings"),  # 149842
    ("examination", "examination"),  # 94094
    ("technique", "technique"),  # 81402
    ("history", "history"),  # 45624
    ("comparisons", "comparison"),  # 8686
    ("clinical history", "history"),  # 7121
    ("reason for examination", "indication"),  # 5845
    ("notification", "notification"),  # 5749
    ("reason for exam", "indication"),  # 4430
    ("clinical information", "history"),  # 4024
    ("exam", "examination"),  # 3907
    ("clinical indication", "indication"),  # 1945
    ("conclusion", "impression"),  # 1802
    ("chest, two views", "findings"),  # 1735
    ("recommendation(s)", "recommendations"),  # 1700
    ("type of examination", "examination"),  # 1678
    ("reference exam", "comparison"),  # 347
    ("patient history", "history"),  # 251
    ("addendum", "addendum"),  # 183
    ("comparison exam", "comparison"),  # 163
    ("date", "date"),  # 108
    ("comment", "comment"),  # 88
    ("findings and impression", "impression"),  # 87
    ("wet read", "wet read"),  # 83
    ("comparison film", "comparison"),  # 79
    ("recommendations", "recommendations"),  # 72
    ("findings/impression", "impression"),  # 47
    ("pfi", "history"),
    ("recommendation", "recommendations"),
    ("wetread", "wet read"),
    ("ndication", "impression"),  # 1 (upstream maps this one to impression, not indication; kept as upstream has it)
    ("impresson", "impression"),  # 2
    ("imprression", "impression"),  # 1
    ("imoression", "impression"),  # 1
    ("impressoin", "impression"),  # 1
    ("imprssion", "impression"),  # 1
    ("impresion", "impression"),  # 1
    ("imperssion", "impression"),  # 1
    ("mpression", "impression"),  # 1
    ("impession", "impression"),  # 3
    ("findings/ impression", "impression"),  # 1
    ("finding", "findings"),  # 8
    ("findins", "findings"),
    ("findindgs", "findings"),  # 1
    ("findgings", "findings"),  # 1
    ("findngs", "findings"),  # 1
    ("findnings", "findings"),  # 1
    ("finidngs", "findings"),  # 2
    ("idication", "indication"),  # 1
    ("reference findings", "findings"),  # 1
    ("comparision", "comparison"),  # 2
    ("comparsion", "comparison"),  # 1
    ("comparrison", "comparison"),  # 1
    ("comparisions", "comparison"),  # 1
))
# Names not in the table: the first of these contained in the name wins (same source, ``main_sections``) ...
MAIN_SECTIONS = ("impression", "findings", "history", "comparison", "addendum")
# ... else a name containing any of these describes the whole study and counts as findings (same source,
# ``p_findings``).
FINDINGS_HINTS = ("chest", "portable", "pa and lateral", "lateral and pa", "ap and lateral", "lateral and ap",
                  "frontal and", "two views", "frontal view", "pa view", "ap view", "one view", "lateral view",
                  "bone window", "frontal upright", "frontal semi-upright", "ribs", "pa and lat")
# The names the parser itself gives; any other section name is a report's own header, lower-cased.
KNOWN_SECTIONS = frozenset({*SECTION_SYNONYMS.values(), *MAIN_SECTIONS, PREAMBLE, FULL_REPORT, LAST_PARAGRAPH})


@dataclasses.dataclass(frozen=True)
class Section:
    name: str  # normalised ("impression", "findings", ...) or "preamble" / "full report" / "last_paragraph"
    header: str  # as written, without the colon ("IMPRESSON", " FINDINGS "); "" for the three pseudo-sections
    start: int  # offset of the section's text in the report
    text: str  # raw text up to the newline before the next header (the preamble ends with the newline + space)


def normalise_name(header: str) -> str:
    """A header's normalised section name (rule 3)."""
    name = header.lower().strip()
    if name in SECTION_SYNONYMS:
        return SECTION_SYNONYMS[name]
    main = next((m for m in MAIN_SECTIONS if m in name), None)
    if main:
        return main
    return "findings" if any(hint in name for hint in FINDINGS_HINTS) else name


def _split(text: str) -> list[Section]:
    """Rules 1 and 2: the preamble and one section per header, or one full-report section."""
    match = HEADER.search(text)
    if match is None:
        return [Section(FULL_REPORT, "", 0, text)]
    sections = [Section(PREAMBLE, "", 0, text[:match.start(1)])]
    while match is not None:
        header, start = match.group(1), match.end()
        newline = text.find("\n", start)
        match = HEADER.search(text, start if newline == -1 else newline)
        end = len(text) if match is None else match.start()
        sections.append(Section(header, header, start, text[start:end]))
    return [dataclasses.replace(s, name=normalise_name(s.name)) for s in sections]


def section_text(text: str) -> list[Section]:
    """The report's sections in order, with normalised names (rules 1-5)."""
    sections = [s for s in _split(text)
                if not (s.name in ("impression", "findings") and not s.text.strip())]
    names = {s.name for s in sections}
    last = sections[-1]
    if "impression" not in names and "findings" not in names and PARAGRAPH_BREAK in last.text:
        head, tail = last.text.split(PARAGRAPH_BREAK, 1)
        sections[-1:] = [dataclasses.replace(last, text=head),
                         Section(LAST_PARAGRAPH, "", last.start + len(head) + len(PARAGRAPH_BREAK), tail)]
    return sections


def last_section(sections: Sequence[Section], name: str) -> Section | None:
    """The last section with that normalised name, as upstream takes it (``list_rindex``)."""
    return next((s for s in reversed(sections) if s.name == name), None)


def _last_text(sections: Sequence[Section], name: str) -> str:
    section = last_section(sections, name)
    return section.text.strip() if section else ""


def findings(sections: Sequence[Section]) -> str:
    """The last findings section's text, stripped; "" when there is none."""
    return _last_text(sections, "findings")


def impression(sections: Sequence[Section]) -> str:
    """The last impression section's text, stripped; "" when there is none."""
    return _last_text(sections, "impression")


def conclusion_section(sections: Sequence[Section]) -> Section | None:
    """Rule 6: the last impression, else the last findings, else last_paragraph, else comparison."""
    return next((s for name in CONCLUSION_ORDER if (s := last_section(sections, name))), None)


def conclusion(sections: Sequence[Section]) -> str:
    """The conclusion's text, stripped; "" when the report has none of the four sections."""
    section = conclusion_section(sections)
    return section.text.strip() if section else ""


def sectioned(sections: Sequence[Section]) -> dict[str, str | None]:
    """Upstream's ``mimic_cxr_sectioned.csv`` row without the study: the last section of each name, stripped, None
    when absent."""
    return {name: (s.text.strip() if (s := last_section(sections, name)) else None) for name in CONCLUSION_ORDER}


def decode(data: bytes, encoding: str = "utf-8") -> str:
    """Report bytes as upstream's text-mode ``open`` reads them: ``\\r\\n`` and lone ``\\r`` become ``\\n``."""
    return data.decode(encoding).replace("\r\n", "\n").replace("\r", "\n")


def clean(text: str) -> str:
    """Everything from the first ``NOTIFICATION:`` on removed, every underscore removed, whitespace collapsed."""
    return " ".join(text.split(NOTIFICATION, 1)[0].replace("_", "").split())


def word_count(text: str) -> int:
    """Whitespace-separated tokens, as the original counts them (a lone ``,`` left by a removed ``___`` counts)."""
    return len(text.split())


def within_length(n: int, low: int = MIN_WORDS, high: int = MAX_WORDS) -> bool:
    """The original's length filter: low <= n <= high, both ends inclusive."""
    return low <= n <= high


def target_of(sections: Sequence[Section]) -> tuple[str, str, str]:
    """(cleaned findings, cleaned impression, target) of an already sectioned report."""
    found, said = clean(findings(sections)), clean(impression(sections))
    return found, said, f"{found} {said}".strip()


def target(text: str) -> tuple[str, str, str]:
    """(cleaned findings, cleaned impression, target = findings + " " + impression, trimmed) of a report."""
    return target_of(section_text(text))


def names(sections: Iterable[Section]) -> list[str]:
    """The normalised names in order (handy for coverage counts and tests)."""
    return [s.name for s in sections]
