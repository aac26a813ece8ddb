"""The cxr_report data card: ``report.build`` (``python -m beam_pipeline.report OUTPUT``) comes here when the run's
config["cohort"] is cxr_report (issue #15: word-count histogram of targets, section coverage).

Sections: dataset (what a record is, the views, the word limits, --one_per_subject, the outputs), funnel (per study,
in metadata.json's funnel order: studies with a kept-view image, with findings or impression, target within the word
limits, first of its subject, written; each step's drop reasons and the study rejects before "written", a missing or
empty report among them; every reject line by stage), splits (studies and patients), target length (written studies per
word-count bin of the target, counts.target_words), section coverage (written studies whose report has each
normalised section), CheXpert label status, the report processing (parser, cleaning, target, instruction), samples,
provenance.

Same rules as the other cards (report.py, whose helpers this uses): aggregates only by default and every count from
1 to 10 shown as "<11". Counts that add up to a shown total (a funnel step and the removals before it, the reject
lines, the split columns, the word-count bins, the label statuses) get complementary suppression
(report_cards.protect): no suppressed count follows by subtraction from one relation; a share is hidden with its
count. A section present in all but 1 to 10 written studies is shown as "all but <11", and a section name that is
not one of the parser's own (a header kept as written) is named only when more than 10 written studies have it.
Report text is patient data: ``--samples N`` adds N records' X-ray thumbnail and target text (val, then test, then
train) and marks the page "contains patient data"; without it no report text is on the page.
"""

from __future__ import annotations

import html
import statistics

from beam_pipeline import mimic
from beam_pipeline.cohorts import cxr_report
from beam_pipeline.cohorts import report_sections as rs
from beam_pipeline.report import (SMALL_CELL, SUPPRESSED, Count, _figure, _section, _table, histograms_figure, page,
                                  read_manifest, small, split_method, write_card)
from beam_pipeline.report_cards import (ALL_BUT, UnitFunnel, bars_figure, figure_counts, images_written, no_samples,
                                        of_total, protect, provenance_section, sample_thumbnails, samples_section,
                                        shared, share_bars, split_line, split_rows, xray)

WRITTEN = "written"  # the key of the written studies among the cells (the page header shows them: never hidden)
TARGET_SECTIONS = ("findings", "impression")
LABEL_STATUS = {"labeled": "labeled (at least one CheXpert value)", "all_blank": "a label row, every value blank",
                "no_label_row": "no label row for the study"}
CARD_STYLE = "<style>table.dataset td,table.processing td{text-align:left}</style>"


# --- funnel ----------------------------------------------------------------------------------------------------

# the first step (studies with a kept-view image) is shown nowhere else, so it may be hidden
FUNNEL = UnitFunnel(noun="study", unit="studies", one="a study", first="studies", drops=cxr_report.DROPS,
                    funnel_steps=cxr_report.funnel_steps, unit_stages=cxr_report.UNIT_STAGES, fixed_first=False)


# --- target length ---------------------------------------------------------------------------------------------

def word_bins(metadata: dict) -> dict[str, int]:
    """Written studies per word-count bin of the target (counts.target_words, keyed by the bin's lower bound
    "020"), labelled by the words the bin can hold under the run's limits ("20–29", "65"); bins the limits leave
    empty are left out unless they hold studies."""
    low_limit, high_limit = metadata["report"]["words"]
    found = metadata["counts"]["target_words"]
    bounds = sorted({*cxr_report.WORD_BUCKETS, *(int(k) for k in found)})
    bins = {}
    for i, low in enumerate(bounds):
        n = found.get(f"{low:03d}", 0)
        high = bounds[i + 1] - 1 if i + 1 < len(bounds) else None
        first = max(low, low_limit)
        last = high_limit if high is None else min(high, high_limit)
        if first > last and not n:
            continue
        label = (f"{low}–{high}" if high is not None else f"≥ {low}") if first > last else \
            f"{first}" if first == last else f"{first}–{last}"
        bins[label] = n
    return bins


def word_cells(metadata: dict) -> dict:
    """The bins and the written studies (fixed), as shown: the bins add up to them."""
    bins = word_bins(metadata)
    return protect({**bins, WRITTEN: metadata["counts"]["matched"]}, [[*bins, WRITTEN]], fixed=[WRITTEN])


def word_rows(metadata: dict) -> list[list]:
    bins, shown, matched = word_bins(metadata), word_cells(metadata), metadata["counts"]["matched"]
    return [[name, shown[name], shared(shown[name], n, matched)] for name, n in bins.items()] + \
        [["total", shown[WRITTEN], shared(shown[WRITTEN], matched, matched)]]


def median_words(manifest: list[dict[str, str]]) -> str:
    """The median target length over the written studies (from the manifest), shown over more than SMALL_CELL."""
    words = [int(row["target_words"]) for row in manifest if row.get("target_words")]
    if len(words) <= SMALL_CELL:
        return f"not shown ({SUPPRESSED} written studies)"
    return f"{statistics.median(words):g} words"


# --- sections --------------------------------------------------------------------------------------------------

def section_rows(metadata: dict) -> list[list]:
    """Per normalised section name (most frequent first): written studies whose report has it (count, share of
    written). A name the parser does not give (a report's own header, kept as written) is named only when more than
    SMALL_CELL written studies have it; the others are one row that says how many names it hides."""
    coverage, matched = metadata["counts"]["section_coverage"], metadata["counts"]["matched"]
    named = {name: n for name, n in coverage.items() if name in rs.KNOWN_SECTIONS or not small(n)}
    unnamed = len(coverage) - len(named)
    rows = [[name, *of_total(n, matched), "parser" if name in rs.KNOWN_SECTIONS else "a report header"]
            for name, n in sorted(named.items(), key=lambda item: (-item[1], item[0]))]
    if unnamed:
        rows.append([f"{Count(unnamed)} other names, not shown", SUPPRESSED + " each", "", "reports' own headers"])
    return rows


def section_figure_counts(metadata: dict) -> dict[str, int]:
    """The named sections' bars (section_rows' names): one in all but a few written studies is not drawn."""
    coverage, matched = metadata["counts"]["section_coverage"], metadata["counts"]["matched"]
    named = {name: n for name, n in sorted(coverage.items(), key=lambda item: (-item[1], item[0]))
             if name in rs.KNOWN_SECTIONS or not small(n)}
    return share_bars(named, matched)


# --- labels ----------------------------------------------------------------------------------------------------

def label_cells(metadata: dict) -> dict:
    labels = metadata["counts"]["labels"]
    statuses = [*LABEL_STATUS, *sorted(set(labels) - set(LABEL_STATUS))]
    values = {status: labels.get(status, 0) for status in statuses}
    return protect({**values, WRITTEN: metadata["counts"]["matched"]}, [[*values, WRITTEN]], fixed=[WRITTEN])


def label_rows(metadata: dict) -> list[list]:
    shown, labels, matched = label_cells(metadata), metadata["counts"]["labels"], metadata["counts"]["matched"]
    return [[status, LABEL_STATUS.get(status, ""), shown[status], shared(shown[status], labels.get(status, 0),
                                                                         matched)]
            for status in shown if status != WRITTEN] + [["total", "", shown[WRITTEN], 1.0 if matched else 0.0]]


# --- dataset and processing ------------------------------------------------------------------------------------

def dataset_rows(metadata: dict) -> list[list]:
    config = metadata["config"]
    low, high = metadata["report"]["words"]
    return [["cohort", config["cohort"]], ["dataset", metadata["dataset"]],
            ["record", "one image per study with a kept view (its smallest dicom_id), the findings and impression of "
                       "the study's report as the target, the study's CheXpert labels"],
            ["views", ", ".join(config.get("views", []))],
            ["target length (--min_words, --max_words)", f"{low} to {high} words, both included"],
            ["one study per patient (--one_per_subject)",
             "yes: each patient's earliest study that no report rule dropped; none when that study is rejected"
             if config.get("one_per_subject") else "no: every study that passes"],
            ["images written", images_written(metadata)], ["split", split_line(metadata)],
            ["outputs", "tfrecords/ (image, target, findings, impression, section names, labels), "
                        "instructions/<split>-*.jsonl (one chat example per written study: the instruction "
                        "and the image path, then the target), manifest/, rejects/, metadata.json"]]


def processing_rows(metadata: dict) -> list[list]:
    report = metadata["report"]
    low, high = report["words"]
    return [["parser", report["parser"]], ["cleaning", report["cleaning"]], ["target", report["target"]],
            ["kept when", f"{low} <= words <= {high} (words: whitespace-separated)"],
            ["instruction (user turn)", report["instruction"]]]


# --- samples ---------------------------------------------------------------------------------------------------

def sample_cards(picked: list[dict], names: list[str]) -> str:
    if not picked:
        return no_samples("no report text and no record's X-ray", "N records' X-ray thumbnails with their target text")
    cards = []
    for example, name in zip(picked, names):
        dicom_id = example["dicom_id"][0].decode()
        image = xray(name, dicom_id)
        positive = [label for label, v in zip(mimic.LABELS, example["labels/chexpert"]) if v == 1.0]
        sections = ", ".join(s.decode() for s in example.get("report/sections", []))
        cards.append(
            f'<figure class="card">{image}<figcaption><b>{html.escape(dicom_id[:17])}…</b> '
            f'{html.escape(example["view_position"][0].decode())}, {html.escape(example["split"][0].decode())}, '
            f'{example["report/words"][0]} words<br><i>sections: {html.escape(sections)}</i><br>'
            f'<i>positive: {html.escape(", ".join(positive) or "none")}</i>'
            f'<p class="target">{html.escape(example["report/target"][0].decode("utf-8"))}</p>'
            "</figcaption></figure>")
    return '<div class="grid">' + "".join(cards) + "</div>"


# --- the page --------------------------------------------------------------------------------------------------

def render(metadata: dict, manifest: list[dict[str, str]], picked: list[dict], names: list[str]) -> str:
    counts, config = metadata["counts"], metadata["config"]
    low, high = metadata["report"]["words"]
    first = ("applied (--one_per_subject): a patient's later studies are dropped, all of them when the first study "
             "is rejected (it is never replaced by a later one)" if config.get("one_per_subject")
             else "not applied (the run had no --one_per_subject): no study is dropped there")
    sections = [
        _section("dataset", "Dataset", CARD_STYLE, _table(["", ""], dataset_rows(metadata), "dataset")),
        FUNNEL.section(metadata, FUNNEL.removals(metadata),
                       "<p>Each step is what is left; the rows before it (−) removed studies since the previous one. "
                       f"A study is counted once it has an image of a kept view ("
                       f"{html.escape(', '.join(config['views']))}); drop reasons are tested in this order, so a "
                       "study counts once: no findings and no impression, a target shorter than "
                       f"{low} or longer than {high} words; first of its subject: {first}. Rejected studies (a "
                       "repeated, conflicting or rejected metadata row of its image, a conflicting label or split "
                       "row, a missing, empty or unreadable report, different copies of a report in the zip, an "
                       "unreadable image) are removed before \"written\".</p>"),
        _section("splits", "Splits (patient-disjoint)", split_method(metadata.get("split")),
                 _table(["split", "studies", "patients"], split_rows(metadata, FUNNEL.unit), "splits"),
                 "<p>instructions/&lt;split&gt;-*.jsonl hold one line per written study of the split.</p>"),
        _section("words", "Target length",
                 f"<p>Written studies per word count of the target (findings + impression, cleaned; {low} to {high} "
                 f"words kept); bins of 1 to {SMALL_CELL} studies, or hidden beside one, are not drawn. Median: "
                 f"{html.escape(median_words(manifest))}.</p>",
                 _table(["words", "studies", "share of written"], word_rows(metadata), "words"),
                 _figure("words.png", "target word counts")),
        _section("sections", "Section coverage",
                 "<p>Written studies whose report has each normalised section (the parser's names; a header it does "
                 "not know is kept lower-cased as written); a report can have several. The target is the last "
                 f"findings and the last impression: {', '.join(TARGET_SECTIONS)} coverage is how many targets have "
                 f"each part. \"{ALL_BUT}\": all but 1 to {SMALL_CELL} written studies.</p>",
                 _table(["section", "studies", "share of written", "name from"], section_rows(metadata),
                        "sections"),
                 _figure("sections.png", "section coverage")),
        _section("labels", "CheXpert label status",
                 "<p>Written studies by their label row (the per-label values are in the TFRecords: labels/chexpert, "
                 "labels/binary under --uncertain_policy, labels/mask; this card does not count them).</p>",
                 _table(["status", "", "studies", "share of written"], label_rows(metadata), "labels")),
        _section("processing", "Report processing",
                 "<p>How each report became a target (metadata.json's report).</p>",
                 _table(["", ""], processing_rows(metadata), "processing")),
        samples_section(picked, sample_cards(picked, names)),
        provenance_section(metadata),
    ]
    banner = f"{len(picked)} sample records (X-ray thumbnails, report text) below." if picked else ""
    return page(metadata, sections, banner)


def build(folder: str, metadata: dict, samples: int, target: str) -> str:
    """Write the card for the run in ``folder`` under ``target``; return the path of index.html."""
    manifest = read_manifest(folder)
    bins, shown = word_bins(metadata), word_cells(metadata)
    picked, names, thumbnails = sample_thumbnails(folder, metadata, samples)
    figures = {
        "funnel.png": FUNNEL.figure(metadata, FUNNEL.removals(metadata)),
        "words.png": histograms_figure([("written studies per target length (words)",
                                         figure_counts(bins, {k: shown[k] for k in bins}))], width=7),
        "sections.png": bars_figure("written studies with each section", section_figure_counts(metadata)),
        **thumbnails,
    }
    return write_card(target, figures, render(metadata, manifest, picked, names))
