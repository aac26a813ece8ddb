"""MIMIC-CXR free-text reports for the synthetic sample tree: the text input of the ``cxr_report`` cohort.

``write`` runs on sample.generate's world with a generator of its own (seeded from ``"<seed>:reports"``) and writes
one report per study, laid out as MIMIC-CXR ships them (mimic-schemas.md §1.5): ``files/p<first two digits of
subject_id>/p<subject_id>/s<study_id>.txt`` under the CXR root, beside the study's image folder. It writes only
these text files, so every other file of the tree stays byte-identical.

Reports look like the release's: a centred ``FINAL REPORT`` title, lines of at most 79 characters indented by one
space, blank lines holding one space, all-caps headers with the body on the header's line or below it, preambles
(``EXAMINATION``/``INDICATION``/``TECHNIQUE``/``COMPARISON`` or the older ``HISTORY``/``REASON FOR EXAMINATION``/
``COMPARISONS``), ``___`` de-identification marks, ``NOTIFICATION:`` sections; about 70 % with findings and
impression, 13 % impression only, 12 % findings only, 5 % without any header (MIMIC-CXR: 82.4 % have an impression,
12.5 % only findings, 5.1 % neither). Impressions name the study's positive CheXpert labels.

Expectations are known by construction, not by running the parser: the generator composes every section body
itself and counts its words after deleting underscores (cohorts.report_sections.clean's rule), so SAMPLE.json's
"reports" section lists, for every written report, the target's word count, and for the planted cases
(``REPORT_CASES``: each parser rule, the cleaning rules, the 20/65-word filter edges, a 0-byte report file, studies
without a report file) the findings, impression, target and conclusion counts (all 0 for the empty file, none for a
missing one; the cohort rejects both: report/empty_report, report/missing_report). Planted cases sit on studies with
a PA image that carry no other planted case of the sample, so they reach the cohort's output (a world with too few
such studies uses other studies, and one with fewer studies than cases plants the first ones of ``REPORT_CASES``
only).
"""

from __future__ import annotations

import dataclasses
import random
import textwrap
from pathlib import Path
from typing import Any, Callable

from beam_pipeline import mimic, sample

TITLE = " " * 33 + "FINAL REPORT"
WIDTH = 78  # text per line after the one-space indent: MIMIC-CXR lines are at most 79 characters
MIN_WORDS, MAX_WORDS = 20, 65  # the cohort's default filter (report_sections.within_length); for the counts only
KINDS = (("findings_and_impression", 70), ("impression_only", 13), ("findings_only", 12), ("no_headers", 5))

FINDINGS_BANK = (
    "PA and lateral views of the chest provided.",
    "The lungs are clear without focal consolidation, effusion, or pneumothorax.",
    "Heart size is normal.",
    "The cardiomediastinal silhouette is within normal limits.",
    "Mediastinal and hilar contours are unremarkable.",
    "There is no pulmonary vascular congestion.",
    "No acute osseous abnormality is detected.",
    "Degenerative changes are noted along the thoracic spine.",
    "Mild atelectasis is seen at the left lung base.",
    "Costophrenic angles are sharp.",
    "The aorta is mildly tortuous and calcified.",
    "Surgical clips project over the right upper quadrant.",
    "Lung volumes are low, with crowding of the bronchovascular markings.",
    "Compared to the prior study of ___, there is no significant interval change.",
    "A right-sided central venous catheter ends in the low superior vena cava.",
    "Healed fractures of the left lateral ribs are again seen.",
    "There is blunting of the right costophrenic angle.",
    "The hila are normal in size and configuration.",
)
IMPRESSION_BANK = (
    "No acute cardiopulmonary process.",
    "No evidence of pneumonia.",
    "Stable appearance of the chest compared to ___.",
    "No radiographic evidence of acute disease.",
    "Findings are unchanged from the prior examination.",
    "Clinical correlation is recommended.",
    "Low lung volumes without focal consolidation.",
    "Follow-up radiographs after treatment are advised.",
)
LABEL_SENTENCES = {  # positive CheXpert label -> an impression sentence naming it
    "Atelectasis": "Bibasilar atelectasis.",
    "Cardiomegaly": "Moderate cardiomegaly.",
    "Consolidation": "Right lower lobe consolidation.",
    "Edema": "Mild pulmonary edema.",
    "Enlarged Cardiomediastinum": "Widened cardiomediastinal silhouette.",
    "Fracture": "Acute fracture of a left rib.",
    "Lung Lesion": "Nodular opacity in the right upper lobe.",
    "Lung Opacity": "Patchy opacity at the left base.",
    "Pleural Effusion": "Small right pleural effusion.",
    "Pleural Other": "Pleural thickening at the apices.",
    "Pneumonia": "Findings concerning for pneumonia.",
    "Pneumothorax": "Small left apical pneumothorax.",
    "Support Devices": "Support devices in standard position.",
}
FILLERS = {  # exact word counts, to make any length
    1: ("Unchanged.", "Stable."),
    2: ("No pneumothorax.", "No effusion."),
    3: ("No pleural effusion.", "Lungs are clear."),
    4: ("The lungs are clear.", "No acute cardiopulmonary process."),
    5: ("No focal consolidation is seen.", "The cardiomediastinal silhouette is normal."),
}
NOTIFICATION_TEXT = ("The findings were discussed with Dr. ___ by Dr. ___ on the telephone on ___ at 2:15 PM, "
                     "5 minutes after discovery of the findings.")
INLINE_NOTIFICATION = "NOTIFICATION:  Findings were telephoned to Dr. ___ at 10:40."


def words(text: str) -> int:
    """Words after deleting underscores: what the cleaned text counts (a lone ``,`` left of ``___,`` counts)."""
    return len(text.replace("_", "").split())


def raw_words(text: str) -> int:
    return len(text.split())


# --------------------------------------------------------------------------------------------------------------
# Text


@dataclasses.dataclass
class Block:
    """One section as written: header (None: headerless paragraphs), paragraphs, layout."""

    header: str | None
    paragraphs: list[str]
    below: bool = False  # body on its own lines below the header (after a blank line) instead of on its line
    verbatim: bool = False  # paragraphs are consecutive lines written as they are (no wrapping, no blank lines)
    tail: str = ""  # appended to the last paragraph, never at a line start (an inline NOTIFICATION)

    def lines(self) -> list[str]:
        """The block's lines without the indent; inline headers share the first line with the body."""
        inline = self.header is not None and not self.below and self.paragraphs and not self.verbatim
        paragraphs = [f"{self.header}:  {p}" if inline and not i else p for i, p in enumerate(self.paragraphs)]
        out: list[str] = list(paragraphs) if self.verbatim else []
        for index, paragraph in enumerate([] if self.verbatim else paragraphs):
            out += ([""] if index else []) + wrap(paragraph)
        if self.tail:  # wrapped with the body, narrower until it starts no line (where it would be a header)
            last, word = out.pop(), self.tail.split()[0]
            tries = (wrap(f"{last}  {self.tail}", width) for width in range(WIDTH, 0, -1))
            out += next(lines for lines in tries if not any(line.startswith(word) for line in lines))
        if self.header is None or inline:
            return out
        return [f"{self.header}:", *([""] if out else []), *out]


def wrap(paragraph: str, width: int = WIDTH) -> list[str]:
    """Lines of at most ``width`` characters, broken at spaces only (a hyphenated word stays one word)."""
    return textwrap.wrap(paragraph, width, break_on_hyphens=False, break_long_words=False)


def render(blocks: list[Block], title: str = TITLE, top: str = "") -> str:
    """The report: title, then blocks separated by blank lines; every line indented by one space, blank lines are
    one space, a final newline."""
    lines: list[str] = []
    for index, block in enumerate(blocks):
        lines += ([""] if index else []) + block.lines()
    return top + title + "\n" + "".join(f" {line}\n" for line in lines)


def exact(rng: random.Random, count: int, bank: tuple[str, ...], first: tuple[str, ...] = ()) -> str:
    """Sentences with exactly ``count`` words (``words``; more if ``first`` alone has more): ``first``, bank
    sentences while they fit, then fillers."""
    chosen, left = list(first), max(0, count - sum(words(s) for s in first))
    for sentence in rng.sample(bank, len(bank)):
        if words(sentence) <= left:
            chosen.append(sentence)
            left -= words(sentence)
    while left > 0:
        size = min(left, 5)
        chosen.append(rng.choice(FILLERS[size]))
        left -= size
    return " ".join(chosen)


def positives(study: sample.Study) -> tuple[str, ...]:
    return tuple(LABEL_SENTENCES[label] for label, value in zip(mimic.LABELS, study.chexpert or ())
                 if value == "1.0" and label in LABEL_SENTENCES)


def preamble(rng: random.Random, study: sample.Study, modern: bool) -> list[Block]:
    """EXAMINATION/INDICATION/TECHNIQUE/COMPARISON (current reports) or HISTORY-style older preambles."""
    pa = any(shot.view == "PA" for shot in study.shots)
    exam = "CHEST (PA AND LAT)" if pa else "CHEST (PORTABLE AP)"
    age = rng.choice(("___-year-old woman", "___-year-old man", "___F", "___M"))
    why = rng.choice(("with cough and fever. Evaluate for pneumonia.", "with shortness of breath.",
                      "with chest pain. // Evaluate for acute process.", "status post fall, rule out fracture."))
    prior = rng.choice(("___.", "None.", "Chest radiograph from ___.", "Comparison is made to the study of ___."))
    if modern:
        return [Block("EXAMINATION", [exam]), Block("INDICATION", [f"{age} {why}"]),
                Block("TECHNIQUE", ["Chest PA and lateral" if pa else "Portable AP upright view of the chest"]),
                Block("COMPARISON", [prior])]
    history = rng.choice(("HISTORY", "CLINICAL HISTORY", "REASON FOR EXAMINATION"))
    return [Block(history, [f"{age} {why}"]), Block(rng.choice(("COMPARISON", "COMPARISONS")), [prior])]


@dataclasses.dataclass
class Draft:
    """A report's text and what it must give: word counts of the cleaned findings and impression, of the target,
    and the conclusion section's name and raw word count (None when the study has no report file)."""

    text: str | None
    findings: int = 0
    impression: int = 0
    conclusion_from: str = ""
    conclusion_words: int = 0

    @property
    def target(self) -> int:
        return self.findings + self.impression

    def expected(self) -> dict[str, Any] | None:
        if self.text is None:
            return None
        return {"findings_words": self.findings, "impression_words": self.impression, "target_words": self.target,
                "within_length": MIN_WORDS <= self.target <= MAX_WORDS, "conclusion_from": self.conclusion_from,
                "conclusion_words": self.conclusion_words}


def standard(rng: random.Random, study: sample.Study, found: str | None, said: str | None, *,
             findings_header: str = "FINDINGS", impression_header: str = "IMPRESSION", extra: list[Block] = (),
             modern: bool | None = None, below: bool | None = None, top: str = "") -> Draft:
    """Preamble, then a findings and/or an impression section (either may be None), then ``extra`` blocks."""
    modern = rng.random() < 0.7 if modern is None else modern
    below = rng.random() < 0.5 if below is None else below
    blocks = preamble(rng, study, modern)
    if found is not None:
        blocks.append(Block(findings_header, [found], below))
    if said is not None:
        blocks.append(Block(impression_header, [said], below))
    text = render(blocks + list(extra), top=top)
    last = said if said is not None else found
    return Draft(text, words(found or ""), words(said or ""), "impression" if said is not None else "findings",
                 raw_words(last or ""))


def headerless(rng: random.Random, study: sample.Study) -> Draft:
    """No header at all: a first paragraph describing the study, then two paragraphs (upstream: last_paragraph)."""
    paragraphs = ["PA and lateral chest radiographs were obtained and compared with the study of ___.",
                  exact(rng, rng.randint(8, 30), FINDINGS_BANK), exact(rng, rng.randint(3, 12), IMPRESSION_BANK,
                                                                     positives(study))]
    return Draft(render([Block(None, paragraphs)]), 0, 0, "last_paragraph", raw_words(" ".join(paragraphs[1:])))


def ordinary(rng: random.Random, study: sample.Study) -> Draft:
    kind = rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
    if kind == "no_headers":
        return headerless(rng, study)
    found = exact(rng, rng.randint(5, 60), FINDINGS_BANK) if kind != "impression_only" else None
    said = None
    if kind != "findings_only":
        first = positives(study)
        said = exact(rng, rng.randint(2, 25), IMPRESSION_BANK, first)
    extra = [Block("NOTIFICATION", [NOTIFICATION_TEXT])] if rng.random() < 0.1 else []
    return standard(rng, study, found, said, extra=extra)


# --------------------------------------------------------------------------------------------------------------
# Planted cases: each exercises one rule (cohort-definitions.md §D.3, §E); the Draft says what it must give


def _sized(total: int, impression: int) -> Callable[[random.Random, sample.Study], Draft]:
    def build(rng: random.Random, study: sample.Study) -> Draft:
        return standard(rng, study, exact(rng, total - impression, FINDINGS_BANK),
                        exact(rng, impression, IMPRESSION_BANK))
    return build


def _findings_and_impression(rng, study) -> Draft:
    return standard(rng, study, exact(rng, 30, FINDINGS_BANK), exact(rng, 8, IMPRESSION_BANK), modern=True,
                    below=True)


def _impression_only(rng, study) -> Draft:
    return standard(rng, study, None, exact(rng, 24, IMPRESSION_BANK))


def _findings_only(rng, study) -> Draft:
    return standard(rng, study, exact(rng, 28, FINDINGS_BANK), None)


def _renamed(header: str, findings: bool) -> Callable[[random.Random, sample.Study], Draft]:
    """A synonym or typo header: for the impression (findings=False) or the findings."""
    def build(rng: random.Random, study: sample.Study) -> Draft:
        if findings:
            return standard(rng, study, exact(rng, 25, FINDINGS_BANK), exact(rng, 6, IMPRESSION_BANK),
                            findings_header=header)
        return standard(rng, study, None, exact(rng, 22, IMPRESSION_BANK), impression_header=header)
    return build


def _typo_headers(rng, study) -> Draft:
    return standard(rng, study, exact(rng, 18, FINDINGS_BANK), exact(rng, 7, IMPRESSION_BANK),
                    findings_header="FINDNGS", impression_header="IMPRESSON")


def _empty_title_header(rng, study) -> Draft:
    """A report title written as a header ("CHEST (PA AND LAT):", a findings name by the "chest" hint) with no
    body: an empty findings section, dropped, so the real FINDINGS section is the findings."""
    draft = standard(rng, study, exact(rng, 21, FINDINGS_BANK), exact(rng, 5, IMPRESSION_BANK))
    draft.text = draft.text.replace(TITLE + "\n", TITLE + "\n CHEST (PA AND LAT):\n \n", 1)
    return draft


def _empty_findings_section(rng, study) -> Draft:
    """An empty FINDINGS section before the impression: dropped; the target is the impression alone."""
    said = exact(rng, 23, IMPRESSION_BANK)
    blocks = preamble(rng, study, True) + [Block("FINDINGS", []), Block("IMPRESSION", [said])]
    return Draft(render(blocks), 0, words(said), "impression", raw_words(said))


def _repeated(name: str) -> Callable[[random.Random, sample.Study], Draft]:
    """Two sections of the same name: upstream takes the last one."""
    def build(rng: random.Random, study: sample.Study) -> Draft:
        early, late = exact(rng, 9, IMPRESSION_BANK), exact(rng, 12, IMPRESSION_BANK)
        found = exact(rng, 20, FINDINGS_BANK)
        if name == "impression":
            blocks = [Block("FINDINGS", [found]), Block("IMPRESSION", [early]),
                      Block("RECOMMENDATION(S)", ["Follow-up chest radiograph in 6 weeks."]),
                      Block("IMPRESSION", [late])]
            return Draft(render(preamble(rng, study, True) + blocks), words(found), words(late), "impression",
                         raw_words(late))
        blocks = [Block("FINDINGS", [early]), Block("FINDINGS", [found])]
        return Draft(render(preamble(rng, study, True) + blocks), words(found), 0, "findings", raw_words(found))
    return build


def _comparison_only(rng, study) -> Draft:
    """Only a one-paragraph COMPARISON beside the indication: the conclusion is the comparison; no target."""
    text = "Compared to ___, " + exact(rng, 14, FINDINGS_BANK)
    blocks = [Block("INDICATION", ["___F with cough."]), Block("COMPARISON", [text])]
    return Draft(render(blocks), 0, 0, "comparison", raw_words(text))


def _notification_section(rng, study) -> Draft:
    return standard(rng, study, exact(rng, 26, FINDINGS_BANK), exact(rng, 6, IMPRESSION_BANK),
                    extra=[Block("NOTIFICATION", [NOTIFICATION_TEXT])])


def _notification_inline(rng, study) -> Draft:
    """``NOTIFICATION:`` mid-line at the end of the impression: no section of its own; cleaning cuts it."""
    found, said = exact(rng, 24, FINDINGS_BANK), exact(rng, 6, IMPRESSION_BANK)
    blocks = preamble(rng, study, True) + [Block("FINDINGS", [found]),
                                           Block("IMPRESSION", [said], tail=INLINE_NOTIFICATION)]
    return Draft(render(blocks), words(found), words(said), "impression", raw_words(f"{said} {INLINE_NOTIFICATION}"))


def _notification_before_impression(rng, study) -> Draft:
    """A NOTIFICATION section between findings and impression: its own section; the impression after it stays (the
    original's report-wide cut would lose it)."""
    found, said = exact(rng, 22, FINDINGS_BANK), exact(rng, 7, IMPRESSION_BANK)
    blocks = preamble(rng, study, True) + [Block("FINDINGS", [found]), Block("NOTIFICATION", [NOTIFICATION_TEXT]),
                                           Block("IMPRESSION", [said])]
    return Draft(render(blocks), words(found), words(said), "impression", raw_words(said))


def _deid_marks(rng, study) -> Draft:
    """``___`` inside findings and impression: deleted; ``___,`` leaves a comma that counts as a word."""
    found = f"Compared to ___, there is no change. {exact(rng, 15, FINDINGS_BANK)} Dr. ___ reviewed the images."
    said = f"{exact(rng, 5, IMPRESSION_BANK)} Discussed with ___ on ___."
    return standard(rng, study, found, said, modern=True)


def _colons_inside_text(rng, study) -> Draft:
    """Colons that start no section: mixed-case line starts ("Heart size: normal.") and an all-caps word with a
    colon in mid-line."""
    lines = ["Heart size: normal.", "Lungs: clear, without consolidation or effusion.",
             "Lines and tubes: right PICC ends in the SVC, NG TUBE: tip in the stomach.", "Bones: intact."]
    said = exact(rng, 6, IMPRESSION_BANK)
    blocks = preamble(rng, study, True) + [Block("FINDINGS", lines, below=True, verbatim=True),
                                           Block("IMPRESSION", [said])]
    found = " ".join(lines)
    return Draft(render(blocks), words(found), words(said), "impression", raw_words(said))


def _addendum_on_top(rng, study) -> Draft:
    """An addendum above the report, separated by a line of underscores (its own section, not in the target)."""
    top = (" " * 32 + "FINAL ADDENDUM\n ADDENDUM:  Compared to the outside study of ___, there is no change.\n"
           " \n " + "_" * 78 + "\n")
    return standard(rng, study, exact(rng, 27, FINDINGS_BANK), exact(rng, 9, IMPRESSION_BANK), top=top)


REPORT_CASES: dict[str, Callable[[random.Random, sample.Study], Draft] | None] = {
    "findings_and_impression": _findings_and_impression,
    "impression_only": _impression_only,
    "findings_only": _findings_only,
    "conclusion_header": _renamed("CONCLUSION", findings=False),
    "findings_and_impression_header": _renamed("FINDINGS AND IMPRESSION", findings=False),
    "findings_slash_impression_header": _renamed("FINDINGS/IMPRESSION", findings=False),
    "typo_headers": _typo_headers,  # FINDNGS, IMPRESSON
    "study_description_header": _renamed("PA AND LATERAL VIEWS OF THE CHEST", findings=True),  # the "chest" hint
    "chest_two_views_header": _renamed("CHEST, TWO VIEWS", findings=True),  # a table entry
    "empty_title_header": _empty_title_header,
    "empty_findings_section": _empty_findings_section,
    "repeated_impression": _repeated("impression"),
    "repeated_findings": _repeated("findings"),
    "no_headers": headerless,
    "comparison_only": _comparison_only,
    "notification_section": _notification_section,
    "notification_inline": _notification_inline,
    "notification_before_impression": _notification_before_impression,
    "deid_marks": _deid_marks,
    "colons_inside_text": _colons_inside_text,
    "addendum_on_top": _addendum_on_top,
    "target_19_words": _sized(19, 5),
    "target_20_words": _sized(20, 5),
    "target_65_words": _sized(65, 12),
    "target_66_words": _sized(66, 12),
    "empty_report_file": lambda rng, study: Draft(""),
    "no_report_file": None,
    "no_report_file_2": None,
}


# --------------------------------------------------------------------------------------------------------------
# Writing


def _hosts(world: sample.World, rng: random.Random) -> list[sample.Study]:
    """Studies for the planted cases: with a PA image and no other planted case first, then any other study."""
    taken = {id(study) for _, study in world.cases}
    clean = [s for s in world.studies if id(s) not in taken and not s.bad_time and not s.broken_file
             and any(shot.view == "PA" for shot in s.shots)]
    chosen = rng.sample(clean, min(len(clean), len(REPORT_CASES)))
    picked = {id(s) for s in chosen}
    return chosen + [s for s in world.studies if id(s) not in picked][:len(REPORT_CASES) - len(chosen)]


def write(world: sample.World, roots: sample.SampleRoots, seed: int) -> dict[str, Any]:
    """Write one report per study under roots.cxr (none for the no_report_file cases, 0 bytes for
    empty_report_file); return SAMPLE.json's "reports" section."""
    rng = random.Random(f"{seed}:reports")
    planted = dict(zip((id(s) for s in _hosts(world, rng)), REPORT_CASES))
    cases, target_words = [], {}
    for study in world.studies:
        case = planted.get(id(study))
        build = REPORT_CASES[case] if case else ordinary
        draft = build(rng, study) if build else Draft(None)
        path = mimic.report_path(study.subject_id, study.study_id)
        if draft.text is not None:
            file = Path(roots.cxr, path)
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(draft.text.encode("ascii"))
            target_words[str(study.study_id)] = draft.target
        if case:
            cases.append({"case": case, "subject_id": study.subject_id, "study_id": study.study_id, "path": path,
                          "has_pa": any(shot.view == "PA" for shot in study.shots), "expected": draft.expected()})
    counts = {"studies": len(world.studies), "reports": len(target_words),
              "studies_without_report": len(world.studies) - len(target_words),
              "with_target": sum(n > 0 for n in target_words.values()),
              "target_within_length": sum(MIN_WORDS <= n <= MAX_WORDS for n in target_words.values())}
    return {"layout": "files/p<first 2 digits of subject_id>/p<subject_id>/s<study_id>.txt under the CXR root",
            "rules": {"target": "cleaned findings + ' ' + cleaned impression (MIT-LCP sections: the last of each "
                                "name); cleaning cuts from NOTIFICATION: on, deletes underscores, collapses "
                                "whitespace; words = whitespace tokens",
                      "length": f"{MIN_WORDS} <= target words <= {MAX_WORDS}",
                      "conclusion": "last impression, else findings, else last_paragraph, else comparison "
                                    "(raw words of the stripped section)"},
            "counts": counts,
            "cases": sorted(cases, key=lambda c: (c["case"], c["study_id"])),
            "target_words": dict(sorted(target_words.items()))}
