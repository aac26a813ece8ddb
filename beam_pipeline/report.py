"""The data card: ``python -m beam_pipeline.report OUTPUT [--samples 8]`` writes OUTPUT/report/index.html and its
PNG figures (local or gs://; follows LATEST).

It reads only what the run wrote: metadata.json (counts, patients, studies and images per split, exact statistics,
the leakage probe, config, versions, checksums), so it takes seconds on any dataset size.
Sections: funnel, splits, labels, timing, text, leakage, demographics, images, retrieval, samples, provenance. The
page checks in the browser that every image loaded and says so at the top.

Safe to look at by default: aggregates only, and every count from 1 to 10 is shown as "<11" (small-cell
suppression, as CMS and most data use agreements ask), in tables, figure bars and annotations alike; counts that
add up to a shown total (the funnel, the splits, a split's label, age, sex and view counts, the score bins, the
source sizes and passages with their rest) hide a second one beside a lone small one (report_cards.protect), and
a count of all but a few written records is hidden too; the leakage probe shows AUROCs, not its per-label counts;
no note text and no record images. ``--samples N`` opts into N validation records (filtered note, labels,
thumbnail) and marks the page "contains patient data, do not share".

This is the ed_cxr card; ``build`` hands a run of another cohort (metadata.json config["cohort"]) to that cohort's
card, which uses the helpers here and the same rules: symile_mimic's is report_symile, medfuse_ihm's and
medfuse_phenotyping's report_medfuse, cxr_ehr's report_cxr_ehr, cxr_report's report_cxr_report (their shared
parts, such as the per-unit funnel and complementary suppression, are in report_cards).
"""

from __future__ import annotations

import argparse
import csv
import html
import importlib
import io
import itertools
import json
import math
import sys
from typing import Iterator

import cv2
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import cohorts, mimic
from beam_pipeline.fileio.tfrecord import parse_example, read_records
from beam_pipeline.readers.common import open_run, shard_files

THUMBNAIL = 192
SMALL_CELL = 10  # counts 1..SMALL_CELL are never shown
SUPPRESSED = f"<{SMALL_CELL + 1}"
HIDDEN = "suppressed"  # a count above SMALL_CELL hidden so that a small one does not follow by subtraction
PHI_BANNER = "Contains patient data, do not share"
DUA_WARNING = ('<p class="warn">Derived from credentialed MIMIC data: keep this report under the same data use '
               'agreement as the dataset.</p>')
# cohort -> the module of its card, whose build(folder, metadata, samples, target) ``build`` calls; ed_cxr's is here
CARDS = {"symile_mimic": "beam_pipeline.report_symile", "medfuse_ihm": "beam_pipeline.report_medfuse",
         "medfuse_phenotyping": "beam_pipeline.report_medfuse", "cxr_ehr": "beam_pipeline.report_cxr_ehr",
         "cxr_report": "beam_pipeline.report_cxr_report"}
COLORS = {"positive": "#c0392b", "uncertain": "#e67e22", "negative": "#2e86c1", "blank": "#d5d8dc"}


def read_manifest(folder: str) -> list[dict[str, str]]:
    pattern = FileSystems.join(folder, "manifest", "manifest-*.csv")
    rows = []
    for meta in sorted(FileSystems.match([pattern])[0].metadata_list, key=lambda m: m.path):
        with FileSystems.open(meta.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            rows += list(csv.DictReader(io.TextIOWrapper(f, encoding="utf-8", newline="")))
    return rows


def passage_titles(metadata: dict) -> dict[str, str]:
    """Titles of the knowledge-base passages, when the index the run used can still be read (ids otherwise)."""
    retrieval = metadata["text"]["retrieval"]
    try:
        with FileSystems.open(FileSystems.join(retrieval["directory"], "passages.jsonl"),
                              compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return {p["id"]: p["title"] for p in map(json.loads, f.read().decode("utf-8").splitlines()) if p}
    except (OSError, TypeError, ValueError, KeyError):
        return {}


def records(folder: str, metadata: dict, splits: tuple[str, ...]) -> Iterator[dict]:
    """The records of ``splits`` in that order and shard order, parsed one at a time: a card reads only as many as
    it takes (bounded, whatever the split size)."""
    for split in splits:
        for path in shard_files(folder, split, metadata):
            yield from map(parse_example, read_records(path))


def sample_records(folder: str, metadata: dict, n: int, splits: tuple[str, ...] = ("val",)) -> list[dict]:
    """The first n records of ``splits`` (default validation) in that order and shard order, parsed."""
    return list(itertools.islice(records(folder, metadata, splits), n))


# --- small-cell suppression ----------------------------------------------------------------------------------

def small(n) -> bool:
    """A count that must not be shown (1 to 10)."""
    return isinstance(n, (int, np.integer)) and not isinstance(n, bool) and 1 <= n <= SMALL_CELL


class Count(int):
    """A count as displayed: "<11" when small, else with thousands separators."""

    def __str__(self) -> str:
        return SUPPRESSED if small(int(self)) else f"{int(self):,}"


def hidden(values: list[int]) -> set[int]:
    """Positions not to show in counts that add up to a shown total: the small ones, and when that is just one, the
    smallest other non-zero one too, so no small count follows by subtraction (in a table or a figure alike)."""
    found = {i for i, v in enumerate(values) if small(v)}
    if len(found) == 1:
        rest = sorted((v, i) for i, v in enumerate(values) if v and i not in found)
        if rest:
            found.add(rest[0][1])
    return found


def withheld(n: int) -> str:
    """A hidden count as shown: "<11" when it is small itself, else "suppressed" (hidden with a small one)."""
    return SUPPRESSED if small(n) else HIDDEN


def cells(values: list[int]) -> list:
    """A row of counts that add up to a shown total: small ones become "<11", the one hidden with them
    "suppressed" (``hidden``)."""
    gone = hidden(values)
    return [withheld(v) if i in gone else Count(v) for i, v in enumerate(values)]


def rate(count: int, total: int):
    """count / total, or "<11" when the count is small (a rate of a known total would reveal it)."""
    return SUPPRESSED if small(count) else count / max(1, total)


def drawn(counts: dict[str, int], parts: bool = False) -> dict[str, int]:
    """Bar heights: small counts are not drawn (0; the axis label says "<11"); with ``parts`` (counts that add up to
    a shown total) neither is the cell a table hides with them."""
    gone = hidden(list(counts.values())) if parts else {i for i, v in enumerate(counts.values()) if small(v)}
    return {k: 0 if i in gone else v for i, (k, v) in enumerate(counts.items())}


def tick_names(counts: dict[str, int], parts: bool = False) -> list[str]:
    gone = hidden(list(counts.values())) if parts else set()
    return [f"{k} ({SUPPRESSED})" if small(v) else f"{k} (suppressed)" if i in gone else k
            for i, (k, v) in enumerate(counts.items())]


# --- figures -------------------------------------------------------------------------------------------------

def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bars(ax, counts: dict[str, int], title: str, color: str = "#2e86c1") -> None:
    heights = drawn(counts, parts=True)  # a hidden count is not drawn, its tick says why
    ax.bar(range(len(heights)), list(heights.values()), color=color)
    ax.set_xticks(range(len(heights)), tick_names(counts, parts=True), rotation=45, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)


def linked_images(counts: dict) -> int:
    """Kept-view images the join linked to a stay: not those without a stay in the window, nor those it rejected
    (a conflicting or rejected stay or label row)."""
    at_join = sum(n for reason, n in counts["rejected_by_reason"].items() if reason.startswith("join/"))
    return counts["images_kept_view"] - counts["no_ed_stay"] - at_join


def funnel_figure(metadata: dict) -> bytes:
    """The ED funnel's steps, the LINKED one included, and its reject reasons, each as funnel_cells shows it."""
    rows, shown = funnel_cells(metadata)
    values = {**dict(rows), LINKED: linked_images(metadata["counts"])}
    return funnel_panels([(name, values[name], shown[name])
                          for name in (IMAGES_TOTAL, kept_views(metadata["config"]), LINKED, WRITTEN)],
                         [(name[len(REJECTED) + 2:], n, shown[name]) for name, n in rows
                          if name.startswith(f"{REJECTED}: ")],
                         ("Stage funnel (images)", "Rejected kept-view images by reason"))


def funnel_panels(steps: list[tuple[str, int, object]], lost: list[tuple[str, int, object]],
                  titles: tuple[str, str]) -> bytes:
    """Left: what is left after each step, right: what was lost, by reason; each (name, count, cell as the table
    shows it): a hidden cell ("<11" or "suppressed") is not drawn and its label says which."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.4), gridspec_kw={"width_ratios": [3, 2]}, layout="constrained")
    for ax, bars, color, title in zip(axes, (steps, lost or [("(none)", 0, 0)]), ("#2e86c1", "#c0392b"), titles):
        visible = [0 if isinstance(cell, str) else n for _, n, cell in bars]
        ax.barh(range(len(bars)), visible[::-1], color=color)
        ax.set_yticks(range(len(bars)), [name for name, _, _ in bars][::-1], fontsize=8)
        for i, (value, (_, _, cell)) in enumerate(zip(visible[::-1], bars[::-1])):
            ax.text(value, i, f" {cell}", va="center", fontsize=8)
        ax.set_xlim(0, max(visible + [1]) * 1.2)
        ax.set_title(title, fontsize=10)
    return _png(figure)


def labels_figure(stats: dict, left_out: dict[str, str]) -> bytes:
    """Stacked label states per split, hidden cells not drawn; a ``left_out`` split (report_cards.hidden_splits)
    not at all."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(14, 5), sharey=True)
    for ax, split in zip(axes, mimic.SPLITS):
        labels = stats["per_split"][split]["labels"]
        total = sum(labels[mimic.LABELS[0]].values())  # the title's; an empty split's is 0
        left = np.zeros(len(mimic.LABELS))
        gone = {name: set(COLORS) if split in left_out else
                {list(COLORS)[i] for i in hidden([labels[name][state] for state in COLORS])} for name in mimic.LABELS}
        for state, color in COLORS.items():
            share = np.array([0.0 if state in gone[name] else labels[name][state] / max(1, total)
                              for name in mimic.LABELS])  # hidden cells are not drawn: the bar ends short
            ax.barh(mimic.LABELS, share, left=left, color=color, label=state)
            left += share
        ax.set_title(f"{split} ({left_out.get(split, Count(total))} images; short bars: cells {SUPPRESSED} and one "
                     "more)", fontsize=10)
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
    axes[0].legend(fontsize=8, loc="lower right")
    return _png(figure)


def histograms_figure(panels: list[tuple[str, dict[str, int]]], width: float = 5) -> bytes:
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 3.2))
    for ax, (title, counts) in zip(np.atleast_1d(axes), panels):
        _bars(ax, counts, title)
    return _png(figure)


def demographics_figure(stats: dict, left_out: dict[str, str]) -> bytes:
    """Age and sex shares per split, hidden cells not drawn; a ``left_out`` split (report_cards.hidden_splits) not
    at all."""
    plt = _pyplot()
    figure, (age_ax, sex_ax) = plt.subplots(1, 2, figsize=(12, 3.4))
    width = 0.27
    for i, split in enumerate(mimic.SPLITS):
        for ax, counts in ((age_ax, stats["per_split"][split]["age"]), (sex_ax, stats["per_split"][split]["sex"])):
            total = max(1, sum(counts.values()))
            ax.bar(np.arange(len(counts)) + (i - 1) * width, [0 if split in left_out else v / total
                                                              for v in drawn(counts, parts=True).values()],
                   width, label=f"{split} (not drawn)" if split in left_out else split)
    ages, sexes = stats["per_split"][mimic.SPLITS[0]]["age"], stats["per_split"][mimic.SPLITS[0]]["sex"]
    age_ax.set_xticks(range(len(ages)), list(ages), rotation=45, fontsize=8)
    sex_ax.set_xticks(range(len(sexes)), list(sexes), fontsize=8)
    age_ax.set_title(f"Age at the X-ray (share of images; cells {SUPPRESSED} not drawn)", fontsize=10)
    sex_ax.set_title(f"Sex (share of images; cells {SUPPRESSED} not drawn)", fontsize=10)
    age_ax.legend(fontsize=8)
    return _png(figure)


def thumbnail(encoded: bytes) -> bytes:
    image = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_GRAYSCALE)
    small = cv2.resize(image, (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA)
    return cv2.imencode(".png", small)[1].tobytes()


# --- HTML ----------------------------------------------------------------------------------------------------

def _table(header: list[str], rows: list[list], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.1%}" if 0 <= value <= 1 else f"{value:,.2f}"
    if isinstance(value, int):  # every count on the page goes through here
        return str(Count(value))
    return str(value)


def _section(anchor: str, title: str, *parts: str) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{"".join(parts)}</section>'


def _figure(name: str, alt: str) -> str:
    return f'<img src="{name}" alt="{html.escape(alt)}">'


def label_rows(stats: dict, split: str, mark: str = "") -> list[list]:
    """Per label: positives, and the positive, uncertain and blank rates of the split's images. The four states add up
    to the split's shown total, so the cells ``hidden`` picks among them (negatives included, though not shown)
    are suppressed: a small negative count would otherwise follow by subtraction. A split whose count is hidden
    shows its ``mark`` (report_cards.hidden_splits) in every cell."""
    if mark:
        return [[name, *[mark] * 4] for name in mimic.LABELS]
    labels = stats["per_split"][split]["labels"]
    rows = []
    for name in mimic.LABELS:
        states = labels[name]
        total = max(1, sum(states.values()))
        order = list(states)
        gone = {order[i] for i in hidden([states[s] for s in order])}

        def shown(state, value):
            return withheld(states[state]) if state in gone else value

        rows.append([name, shown("positive", states["positive"]), shown("positive", states["positive"] / total),
                     shown("uncertain", states["uncertain"] / total), shown("blank", states["blank"] / total)])
    return rows


PROBE_TITLES = {"filtered_note": "filtered note", "filtered_note_without_marker": "filtered note, marker deleted",
                "unfiltered_note": "unfiltered note", "structured": "structured features"}


def probe_part(probe: dict | None, left_out: dict[str, str]) -> str:
    """The leakage probe: per label, validation AUROC of the same classifier on each input. Its per-label record and
    positive counts stay in metadata.json: the val subsample is the whole val split up to 5,000 records, so they
    would give back what the label table hides (negatives by subtraction, a suppressed positive count, uncertain
    counts under --uncertain_policy ones or ignore). The subsample's sizes are its splits' images (up to the cap),
    so a ``left_out`` split (report_cards.hidden_splits) shows its mark."""
    if not probe:
        return "<p>This run has no leakage probe (metadata.json written by an older version).</p>"
    inputs = probe["inputs"]
    rows = []
    for label, entry in probe["labels"].items():
        aurocs = [f"{entry[name]:.3f}" if name in entry else "–" for name in inputs]
        rows.append([label, *aurocs, f"skipped: fewer than {probe.get('min_class', 5)} positives or negatives"
                     if "skipped" in entry else ""])
    method = probe["method"]
    return (f"<p>Validation AUROC of one simple classifier per label ({html.escape(method['classifier'])}; text: "
            f"{html.escape(method['text_features'])}). The subsample ({html.escape(method['subsample'])}) holds "
            f"{left_out.get('train', Count(probe['n_train']))} train and {left_out.get('val', Count(probe['n_val']))} "
            "val records, labelled or not; each label's classifier is fitted and scored on those with a target for "
            "it (labels/mask 1; their counts per label are in metadata.json's leakage_probe, not on this page). "
            f"{html.escape(method['how_to_read'][0].upper() + method['how_to_read'][1:])}. 0.5 is chance. The "
            "unfiltered note is never written; only these numbers are kept.</p>" +
            _table(["label", *[PROBE_TITLES.get(name, name) for name in inputs], ""], rows, "probe"))


def label_text(raw: list[float], names: tuple[str, ...]) -> str:
    """A record's labels in words: its positive and uncertain ones (1, -1), or "no labels" when all are blank."""
    if all(map(math.isnan, raw)):
        return "no labels"
    positive = [label for label, v in zip(names, raw) if v == 1.0]
    uncertain = [label for label, v in zip(names, raw) if v == -1.0]
    return "positive: " + (", ".join(positive) or "none") + ("; uncertain: " + ", ".join(uncertain) if uncertain
                                                             else "")


def sample_cards(samples: list[dict], names: list[str]) -> str:
    if not samples:
        return ("<p>Aggregate only: no note text and no record images on this page. <code>python -m "
                "beam_pipeline.report OUTPUT --samples N</code> adds N validation records (filtered note, labels, "
                f"thumbnail) and marks the page \"{PHI_BANNER.lower()}\".</p>")
    cards = []
    for example, name in zip(samples, names):
        labels = label_text(example["labels/chexpert"], mimic.LABELS)
        cards.append(
            f'<figure class="card"><img src="{name}" alt="sample X-ray {html.escape(example["dicom_id"][0].decode())}">'
            f'<figcaption><b>{html.escape(example["dicom_id"][0].decode()[:17])}…</b> '
            f'{html.escape(example["view_position"][0].decode())}, '
            f'{example["hours_from_arrival"][0]:.1f} h after arrival<br><i>{html.escape(labels)}</i>'
            f'<p>{html.escape(example["note/text"][0].decode("utf-8"))}</p></figcaption></figure>')
    return '<div class="grid">' + "".join(cards) + "</div>"


STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}section{margin-bottom:2em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:12px}.card{margin:0;border:1px solid
#ddd;padding:8px;font-size:12px}.card img{width:192px;height:192px}.warn{background:#fdf2e9;padding:8px}
.phi{background:#c0392b;color:#fff;font-size:1.4em;font-weight:bold;padding:12px;text-align:center}"""
CHECK_IMAGES = """<script>window.addEventListener("load",()=>{const all=[...document.images];
const broken=all.filter(i=>!(i.complete&&i.naturalWidth>0)).length;document.body.dataset.images=all.length;
document.body.dataset.brokenImages=broken;document.getElementById("image-check").textContent=broken?
broken+" of "+all.length+" images failed to load":"all "+all.length+" images loaded";});</script>"""


def split_method(split: dict | None) -> str:
    """How the split was made (metadata.json's ``split``), in words."""
    if not split:
        return ""
    lines = [f"Strategy: <b>{html.escape(split['strategy'])}</b>: {html.escape(split['rule'])}."]
    if split["strategy"] == "official":
        lines.append(f"Images missing from the split file: {html.escape(split['missing_from_official_file'])}. "
                     f"A patient in several official splits: {html.escape(split['patient_in_several_official_splits'])}"
                     f"; patients moved: {Count(split['reassigned_patients'])}, images moved: "
                     f"{Count(split['reassigned_records'])}.")
    return f'<p id="split-method">{" ".join(lines)}</p>'


# the ED funnel's rows that its figure and relations name (the kept views' row names the run's views: kept_views)
IMAGES_TOTAL, UNREADABLE, OTHER_VIEWS = "images in metadata", "unreadable rows", "other views"
NO_STAY, DROPPED_AFTER = "no ED stay in window", "after ED departure, dropped (--within_ed_stay)"
REJECTED, WRITTEN = "rejected", "written (matched)"
LINKED = "linked to an ED stay"  # a step of the funnel figure only (linked_images)
OTHER_SIZES, OTHER_PASSAGES = "other sizes", "other passages"  # top_cells' rest


def kept_views(config: dict) -> str:
    return f"kept views ({','.join(config['views'])})"


def funnel_cells(metadata: dict) -> tuple[list[tuple[str, int]], dict]:
    """The funnel table's rows (name, images) and every funnel cell as shown, the figure's LINKED step too,
    protected together (report_cards.protect). Relations: images in metadata = unreadable + other views + kept
    views; kept views = no ED stay + dropped after departure + rejected + written; rejected = its reasons; kept
    views = LINKED + no ED stay + join rejects; LINKED = dropped after departure + the other rejects + written. The
    images in metadata (the inputs table shows its rows) and written (the page header) are fixed."""
    from beam_pipeline.report_cards import protect  # report_cards imports this module
    counts = metadata["counts"]
    kept = kept_views(metadata["config"])
    reasons = {f"{REJECTED}: {reason}": n for reason, n in counts["rejected_by_reason"].items()}
    joins = [name for name in reasons if name.startswith(f"{REJECTED}: join/")]
    rows = [(IMAGES_TOTAL, counts["images_total"]), (UNREADABLE, counts["images_unreadable"]),
            (OTHER_VIEWS, counts["images_other_view"]), (kept, counts["images_kept_view"]),
            (NO_STAY, counts["no_ed_stay"]), (DROPPED_AFTER, counts.get("dropped_after_ed_departure", 0)),
            (REJECTED, counts["rejected"]), *reasons.items(), (WRITTEN, counts["matched"])]
    relations = [[IMAGES_TOTAL, UNREADABLE, OTHER_VIEWS, kept], [kept, NO_STAY, DROPPED_AFTER, REJECTED, WRITTEN],
                 [REJECTED, *reasons], [kept, LINKED, NO_STAY, *joins],
                 [LINKED, DROPPED_AFTER, *(name for name in reasons if name not in joins), WRITTEN]]
    return rows, protect({**dict(rows), LINKED: linked_images(counts)}, relations, fixed=[IMAGES_TOTAL, WRITTEN])


def view_names(stats: dict) -> list[str]:
    return sorted({v for s in mimic.SPLITS for v in stats["per_split"][s]["view"]})


TOP_ROWS, TOP_DRAWN = 15, 10  # the source-size and passage tables' rows, and their figures' bars


def top_cells(counts: dict[str, int], other: str) -> tuple[dict[str, int], dict[str, object]]:
    """The first TOP_ROWS of ``counts`` (largest first) and the rest summed as ``other`` (when there is one), with
    each as ``cells`` shows it: together they are the written images (or the retrievals), a total the page shows, so
    a lone small one cannot be had by subtraction."""
    top = dict(list(counts.items())[:TOP_ROWS])
    rest = sum(counts.values()) - sum(top.values())
    values = {**top, other: rest} if rest else top
    return values, dict(zip(values, cells(list(values.values()))))


def top_figure(counts: dict[str, int], other: str) -> dict[str, int]:
    """A figure's bars of top_cells: the first TOP_DRAWN, a cell the table hides not drawn."""
    from beam_pipeline.report_cards import figure_counts  # report_cards imports this module
    values, shown = top_cells(counts, other)
    return figure_counts(dict(list(values.items())[:TOP_DRAWN]), shown)


def split_counts(values: list[int], mark: str = "") -> list:
    """A split's counts that add up to its images: ``cells``, or the split's ``mark`` in each when the split table
    hides its images (report_cards.hidden_splits)."""
    return [mark] * len(values) if mark else cells(values)


def render(metadata: dict, split_rows: list[list], left_out: dict[str, str], samples: list[dict],
           sample_names: list[str]) -> str:
    """The page: ``split_rows`` is the split table, ``left_out`` its splits whose images it hides
    (report_cards.hidden_splits)."""
    from beam_pipeline.report_cards import of_total  # report_cards imports this module
    counts, stats = metadata["counts"], metadata["stats"]
    rows, shown = funnel_cells(metadata)
    unlabelled = counts["labels"].get("no_label_row", 0) + counts["labels"].get("all_blank", 0)
    funnel_rows = [*[[name, shown[name]] for name, _ in rows],  # the last two: of the written, so of_total
                   ["written: without labels", of_total(unlabelled, counts["matched"])[0]],
                   ["written: after ED departure", of_total(counts.get("after_ed_departure", 0), counts["matched"])[0]]]
    per_split, views = stats["per_split"], view_names(stats)
    notes = counts["notes"]
    text_rows = [["notes tokenised", notes["tokenized"]], ["notes redacted by the leakage filter", notes["redacted"]],
                 ["notes truncated", notes["truncated"]],
                 ["truncation rate", rate(notes["truncated"], notes["tokenized"])],
                 *[[f"leakage rule: {k}", v] for k, v in counts["leakage_hits"].items()]]
    sections = [
        _section("funnel", "Stage funnel", _table(["stage", "images"], funnel_rows, "funnel"),
                 _figure("funnel.png", "stage funnel")),
        _section("splits", "Splits (patient-disjoint)", split_method(metadata.get("split")),
                 _table(["split", "images", "studies", "patients"], split_rows, "splits"),
                 "<p>A split whose images are hidden here shows the same for each of its counts below (labels, "
                 "ages, sexes, views, probe records): they add up to its images.</p>" if left_out else ""),
        _section("labels", "CheXpert labels per split", *[
            f"<h3>{s}</h3>" + _table(["label", "positive", "positive rate", "uncertain rate", "blank rate"],
                                     label_rows(stats, s, left_out.get(s, "")), f"labels-{s}")
            for s in mimic.SPLITS],
                 _figure("labels.png", "label prevalence per split")),
        _section("timing", "Hours from ED arrival to the X-ray",
                 _table(["hours", "images"], [[k, v] for k, v in zip(stats["hours_from_arrival"],
                                                                    cells(list(stats["hours_from_arrival"].values())))],
                        "hours"),
                 _figure("hours.png", "hours from arrival")),
        _section("text", "Notes and tokens", _table(["", "count"], text_rows, "text"),
                 _figure("text.png", "note and token lengths")),
        _section("leakage", "Leakage probe: what a classifier learns from the notes", probe_part(
            metadata.get("leakage_probe"), left_out)),
        _section("demographics", "Age and sex per split", *[
            f"<h3>{s}</h3>" + "".join(
                _table(["", *per_split[s][key]],
                       [[key, *split_counts(list(per_split[s][key].values()), left_out.get(s, ""))]], f"{key}-{s}")
                for key in ("age", "sex")) for s in mimic.SPLITS],
                 _figure("demographics.png", "age and sex per split")),
        _section("images", "Views and source image sizes", _table(
            ["split", *views],
            [[s, *split_counts([per_split[s]["view"].get(v, 0) for v in views], left_out.get(s, ""))]
             for s in mimic.SPLITS], "views"),
                 _table(["source size (rows x columns)", "images"],
                        list(map(list, top_cells(stats["image_sizes"], OTHER_SIZES)[1].items())), "sizes"),
                 _figure("images.png", "views and image sizes")),
    ]
    rag = stats["rag"]
    if rag["passages"]:
        titles = passage_titles(metadata)
        sections.append(_section("retrieval", "Retrieval", _table(
            ["passage", "title", "times retrieved"],  # they add up to the written records x top k
            [[k, titles.get(k, ""), v] for k, v in top_cells(rag["passages"], OTHER_PASSAGES)[1].items()],
            "passages"),
            _table(["cosine score", "retrievals"],  # they add up to the written records x top k
                   [[k, v] for k, v in zip(rag["scores"], cells(list(rag["scores"].values())))], "scores"),
            _figure("retrieval.png", "retrieval scores and most retrieved passages")))
    else:
        sections.append(_section("retrieval", "Retrieval", "<p>This run did no retrieval (no --kb_index).</p>"))
    sections.append(_section("samples", f"Sample validation records ({len(samples)})", DUA_WARNING,
                             sample_cards(samples, sample_names)))
    rules = metadata["text"]["leakage_rules"]
    # The card names the rules; their patterns stay in metadata.json.
    text = {**metadata["text"], "leakage_rules": {**rules, "rules": [r["id"] for r in rules["rules"]]}}
    provenance = [*provenance_tables(metadata),
                  "<h3>Text models</h3><pre>" + html.escape(json.dumps(text, indent=1)) + "</pre>"]
    sections.append(_section("provenance", "Config, versions and inputs", *provenance))
    return page(metadata, sections, f"{len(samples)} sample records with note text and images below." if samples
                else "")


def provenance_tables(metadata: dict) -> list[str]:
    """The run's flags, package versions and input files (path, rows, sha256)."""
    return [
        "<h3>Config</h3>" + _table(["flag", "value"], [[k, json.dumps(v)] for k, v in metadata["config"].items()],
                                   "config"),
        "<h3>Versions</h3>" + _table(["package", "version"], list(metadata["versions"].items()), "versions"),
        "<h3>Inputs</h3>" + _table(["table", "path", "rows", "sha256"], [[k, v["path"], v["rows"], v["sha256"]]
                                                                         for k, v in metadata["inputs"].items()],
                                   "inputs")]


def page(metadata: dict, sections: list[str], banner: str = "") -> str:
    """The whole page around the sections. A ``banner`` (what record-level content the page shows) marks it
    "contains patient data" at the top and in the title; without one it says it is aggregate only."""
    config = metadata["config"]
    aggregate = "" if banner else f'<p id="aggregate">Aggregate only; counts from 1 to {SMALL_CELL} are shown as ' \
                                  f'"{SUPPRESSED}".</p>'
    title = (f"{PHI_BANNER}: " if banner else "") + html.escape(config["output"])
    banner = f'<p class="phi" id="phi-banner">{PHI_BANNER}: {html.escape(banner)}</p>' if banner else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Data card: {title}'
            f'</title><style>{STYLE}</style></head><body>{banner}<h1>Data card</h1><p>'
            f'{html.escape(metadata["dataset"])}: <code>{html.escape(config["output"])}</code>, '
            f'{Count(metadata["counts"]["matched"])} records. <span id="image-check">checking images…</span></p>'
            f'{aggregate}{"".join(sections)}{CHECK_IMAGES}</body></html>')


def build(output: str, samples: int = 0, target: str = "") -> str:
    """Write the report; return the path of index.html. ``samples`` > 0 adds that many validation records (note
    text and thumbnails) and the "contains patient data" banner; the default page is aggregate only."""
    folder, metadata = open_run(output)
    target = target or FileSystems.join(folder, "report")
    cohort = metadata["config"].get("cohort", cohorts.DEFAULT)  # runs from before --cohort are ed_cxr
    if cohort != "ed_cxr":
        if cohort not in CARDS:
            raise ValueError(f"no data card for --cohort={cohort} yet (cards: ed_cxr, {', '.join(CARDS)})")
        return importlib.import_module(CARDS[cohort]).build(folder, metadata, samples, target)
    from beam_pipeline import report_cards  # it imports this module
    stats, counts = metadata["stats"], metadata["counts"]
    left_out = report_cards.hidden_splits(metadata, "images")
    figures = {
        "funnel.png": funnel_figure(metadata),
        "labels.png": labels_figure(stats, left_out),
        "hours.png": histograms_figure([("hours from ED arrival to the X-ray", stats["hours_from_arrival"])]),
        "text.png": histograms_figure([("note length (characters)", stats["note_chars"]),
                                       ("note length (tokens)", stats["note_tokens"])]),
        "demographics.png": demographics_figure(stats, left_out),
        "images.png": histograms_figure([("view positions", {v: sum(stats["per_split"][s]["view"].get(v, 0)
                                                                    for s in mimic.SPLITS) for v in view_names(stats)}),
                                         (f"source sizes (top {TOP_DRAWN})", top_figure(stats["image_sizes"],
                                                                                        OTHER_SIZES))]),
    }
    if stats["rag"]["passages"]:
        figures["retrieval.png"] = histograms_figure([("retrieval scores", stats["rag"]["scores"]),
                                                      ("most retrieved passages", top_figure(stats["rag"]["passages"],
                                                                                             OTHER_PASSAGES))])
    picked = sample_records(folder, metadata, samples) if metadata["image"] and samples > 0 else []
    names = [f"sample-{i:02d}.png" for i in range(len(picked))]
    figures.update({name: thumbnail(example["image/encoded"][0]) for name, example in zip(names, picked)})
    splits = report_cards.split_rows(metadata, "images", {"studies": counts["studies_per_split"]})
    return write_card(target, figures, render(metadata, splits, left_out, picked, names))


def write_card(target: str, figures: dict[str, bytes], html_page: str) -> str:
    """Write the figures and index.html under target; return the path of index.html."""
    for name, data in figures.items():
        with FileSystems.create(FileSystems.join(target, name), mime_type="image/png") as f:
            f.write(data)
    index = FileSystems.join(target, "index.html")
    with FileSystems.create(index, mime_type="text/html") as f:
        f.write(html_page.encode("utf-8"))
    return index


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m beam_pipeline.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="the --output folder (follows its LATEST) or one run folder, local or gs://")
    parser.add_argument("--samples", type=int, default=0,
                        help="add N validation records (note text and thumbnail; symile_mimic: one 12-lead ECG "
                             "strip, X-ray thumbnails and labels; medfuse_*: hourly heatmaps of the 17 channels and "
                             "the paired X-rays; cxr_ehr: X-ray thumbnails with their raw variables; cxr_report: "
                             "X-ray thumbnails with their target text) and mark the page 'contains patient data, do "
                             "not share' (default 0: aggregate only, counts 1-10 shown as <11)")
    parser.add_argument("--to", default="", help="where to write (default: the run folder's report/)")
    args = parser.parse_args(argv)
    try:
        print(f"Report: {build(args.output, args.samples, args.to)}")
    except FileNotFoundError as err:  # no complete run there (readers.common says which and why)
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
