"""The medfuse_ihm / medfuse_phenotyping data card: ``report.build`` (``python -m beam_pipeline.report OUTPUT``)
comes here when the run's config["cohort"] is one of them.

Sections: task, funnel (per ICU stay, in metadata.json's funnel order, each step's drop reasons and the stay
rejects before "written"), splits (stays, patients, paired set vs unpaired stays, split sources), channel coverage
(the 17 channels: stays observed, share of written stays, observed hourly bins; never-observed channels flagged and
those with no MIMIC-IV item named), labels (positives and share: 1 row for IHM, 25 for phenotyping), ICU length of
stay (an aggregate histogram), the train-only normaliser, samples, provenance.

Same rules as the other cards (report.py, whose helpers this uses): aggregates only by default and every count
from 1 to 10 shown as "<11". Counts that add up to a shown total (a funnel step and the removals before it, the
split table's rows and columns, the LOS bins, the split sources) get complementary suppression (report_cards): no
suppressed count follows by subtraction from one relation; a split whose stays are hidden hides its patients too.
A share whose complement is 1 to 10 (all but a few stays) is not shown either, and a normaliser mean/sd only for
a channel observed in more than 10 train stays (the normaliser is fitted on train; metadata.json's channel_coverage
counts them).
``--samples N`` adds N records' hourly heatmap of the 17 channels (value and mask) and the paired X-ray thumbnail
(val, then test, then train; paired records first), and marks the page "contains patient data".
"""

from __future__ import annotations

import html
import itertools

import numpy as np

from beam_pipeline import mimic
from beam_pipeline.cohorts import medfuse_stays as stays_lib
from beam_pipeline.cohorts.medfuse_metadata import DROPS, STAY_STAGES, funnel_steps
from beam_pipeline.report import (SMALL_CELL, SUPPRESSED, Count, _figure, _png, _pyplot, _section, _table,
                                  histograms_figure, page, read_manifest, records, small, thumbnail, write_card)
from beam_pipeline.report_cards import (HIDDEN, SAMPLE_SPLITS, UnitFunnel, bars_figure, figure_counts, no_samples,
                                        of_total, protect, provenance_section, samples_section, share_bars, xray)

SAMPLE_SCAN = 200  # records read at most, beyond the N asked, looking for paired ones
LOS_BINS = ((0, 24, "< 1 d"), (24, 48, "1–2 d"), (48, 72, "2–3 d"), (72, 120, "3–5 d"), (120, 168, "5–7 d"),
            (168, 336, "7–14 d"), (336, 720, "14–30 d"), (720, float("inf"), "≥ 30 d"))  # hours, [lower, upper)
CARD_STYLE = ("<style>table.task td{text-align:left}.series-card{margin:0 0 1em;border:1px solid #ddd;"
              "padding:8px;font-size:12px}.series-card img{max-width:100%;vertical-align:top;margin-right:8px}"
              "</style>")
TASKS = {"ihm": "in-hospital mortality from the first 48 h of the ICU stay",
         "phenotyping": "25 acute-care phenotypes (CCS groups of the admission's ICD codes) from the whole ICU stay"}


# --- funnel ----------------------------------------------------------------------------------------------------

FUNNEL = UnitFunnel(noun="ICU stay", unit="stays", one="a stay", first="stays", drops=DROPS,
                    funnel_steps=funnel_steps, unit_stages=STAY_STAGES)


def removals(metadata: dict) -> dict[str, dict[str, int]]:
    """Per funnel step, what removed stays since the previous one: its drop reasons (those of the task: no
    los_under_48h for phenotyping), and before "written" the stay rejects (join/, images/). "ICU stays" and
    "written" are fixed in the funnel's cells (the inputs' rows and the page header show them)."""
    dropped = metadata["counts"]["dropped"]
    return FUNNEL.removals(metadata, keep=lambda reason: reason != "los_under_48h" or metadata["task"] == "ihm"
                           or bool(dropped.get(reason)))


# --- splits ----------------------------------------------------------------------------------------------------

def paired_per_split(manifest: list[dict[str, str]]) -> dict[str, int]:
    return {split: sum(r["split"] == split and r["has_cxr"] == "1" for r in manifest) for split in mimic.SPLITS}


SOURCES = ("testset_iv", "valset_iv", stays_lib.HASH_FALLBACK)
CHANGED = "changed lists"  # the packaged lists put the subject in another split than the run did


def source_counts(metadata: dict, manifest: list[dict[str, str]]) -> dict[tuple[str, str], int]:
    """(source, split) -> written stays: which MedFuse list decided each written stay's split, recomputed from its
    subject_id with the packaged lists and the run's salt (metadata.json's split_sources counts stays when they are
    split, so also those rejected afterwards at images/)."""
    test_flags, val_flags = stays_lib.load_split_files()
    salt = metadata["split"].get("salt") or metadata["config"]["split_salt"]
    found = {(source, split): 0 for source in SOURCES for split in mimic.SPLITS}
    for row in manifest:
        split, source = stays_lib.subject_split(int(row["subject_id"]), test_flags, val_flags, salt)
        key = (source if split == row["split"] else CHANGED, row["split"])
        found[key] = found.get(key, 0) + 1
    return found


def split_cells(metadata: dict, manifest: list[dict[str, str]]) -> dict:
    """The split table's and the source table's cells as shown, protected together (they share the stays per
    split): keys (column, split or "total") for stays, paired, unpaired, ("patients", split) and ("source", source,
    split or "total"). Rows and columns add up; the written total is fixed; a split's patients are hidden with its
    stays (no more patients than stays: shown, they would bound the hidden count)."""
    counts = metadata["counts"]
    paired = paired_per_split(manifest)
    values = {}
    for split in mimic.SPLITS:
        values[("stays", split)] = counts["per_split"][split]
        values[("patients", split)] = counts["patients_per_split"][split]
        values[("paired", split)] = paired[split]
        values[("unpaired", split)] = counts["per_split"][split] - paired[split]
    for column in ("stays", "paired", "unpaired"):
        values[(column, "total")] = sum(values[(column, s)] for s in mimic.SPLITS)
    sources = source_counts(metadata, manifest)
    names = list(dict.fromkeys(source for source, _ in sources))
    for (source, split), n in sources.items():
        values[("source", source, split)] = n
    for source in names:
        values[("source", source, "total")] = sum(sources.get((source, s), 0) for s in mimic.SPLITS)
    splits = (*mimic.SPLITS, "total")
    relations = [[(c, s) for c in ("stays", "paired", "unpaired")] for s in splits]
    relations += [[(c, s) for s in ("total", *mimic.SPLITS)] for c in ("stays", "paired", "unpaired")]
    relations += [[("source", n, s) for s in ("total", *mimic.SPLITS)] for n in names]
    relations += [[("stays", s), *(("source", n, s) for n in names)] for s in splits]
    follow = {("patients", s): ("stays", s) for s in mimic.SPLITS}
    values = {key: values.get(key, 0) for key in [*(key for relation in relations for key in relation), *follow]}
    return protect(values, relations, fixed=[("stays", "total")], follow=follow)


def split_rows(metadata: dict, manifest: list[dict[str, str]]) -> list[list]:
    shown = split_cells(metadata, manifest)
    rows = [[split, *(shown[(column, split)] for column in ("stays", "patients", "paired", "unpaired"))]
            for split in mimic.SPLITS]
    return rows + [["total", shown[("stays", "total")], "", shown[("paired", "total")],
                    shown[("unpaired", "total")]]]


def source_rows(metadata: dict, manifest: list[dict[str, str]]) -> list[list]:
    shown = split_cells(metadata, manifest)
    names = list(dict.fromkeys(key[1] for key in shown if key[0] == "source"))
    splits = (*mimic.SPLITS, "total")
    return [[name, *(shown[("source", name, s)] for s in splits)] for name in names] + \
        [["written", *(shown[("stays", s)] for s in splits)]]


# --- channels, labels, LOS, normaliser -----------------------------------------------------------------------

def channel_rows(metadata: dict) -> list[list]:
    """Per channel in channel_order: stays with it observed (count, share of written), observed hourly bins
    (hidden with the stays when those are few), and a note for never-observed channels."""
    coverage, matched = metadata["counts"]["channel_coverage"], metadata["counts"]["matched"]
    never, absent = set(metadata["never_observed_channels"]), set(metadata["never_in_mimic_iv"])
    rows = []
    for channel in metadata["channel_order"]:
        stays, bins = coverage[channel]["stays"], coverage[channel]["bins"]
        note = ("never observed: no MIMIC-IV item" if channel in absent else "never observed" if channel in never
                else "")
        rows.append([channel, *of_total(stays, matched), HIDDEN if small(stays) else Count(bins), note])
    return rows


def label_rows(metadata: dict) -> list[list]:
    prevalence, matched = metadata["counts"]["label_prevalence"], metadata["counts"]["matched"]
    return [[name, *of_total(prevalence.get(name, 0), matched)] for name in metadata["label_names"]]


def los_counts(manifest: list[dict[str, str]]) -> dict[str, int]:
    """Written stays per LOS bin (hours from the manifest's los_hours; only these sums leave this function)."""
    found = {name: 0 for _, _, name in LOS_BINS}
    for row in manifest:
        hours = float(row["los_hours"])
        found[next(name for low, high, name in LOS_BINS if low <= hours < high)] += 1
    return found


def normalizer_rows(metadata: dict) -> list[list]:
    """Per standardised column: train mean and sd, shown only for a channel observed in more than SMALL_CELL of
    the fit's train stays (normalizer.train_stays_observed: those rejected at images/ too, which written-stay
    counts miss; fewer: close to a few patients' values); observed in none: the imputed normal value, no patient's."""
    normalizer = metadata["normalizer"]
    observed = normalizer.get("train_stays_observed")  # absent from an older run's metadata.json: every mean hidden
    rows = []
    for column, mean, sd in zip(normalizer["columns"], normalizer["means"], normalizer["stds"]):
        stays = SMALL_CELL if observed is None else observed.get(column, 0)
        if not stays:
            rows.append([column, f"{mean:,.4g}", f"{sd:,.4g} (not observed in train: imputed)"])
        elif stays <= SMALL_CELL:
            rows.append([column, f"{SUPPRESSED} train stays", f"{SUPPRESSED} train stays"])
        else:
            rows.append([column, f"{mean:,.4g}", f"{sd:,.4g}"])
    return rows


def normalizer_part(metadata: dict, manifest: list[dict[str, str]]) -> str:
    """The normaliser's fit and its rows (normalizer_rows). Its train hours are 48 a stay for IHM, so they are
    hidden with the train stays when the split table hides those."""
    normalizer = metadata["normalizer"]
    if not normalizer:
        return ("<p>No normaliser: the run did not standardise the features (--normalize_timeseries=false) or had "
                "fewer than 2 train hours.</p>")
    stays = split_cells(metadata, manifest)[("stays", "train")]
    hours = html.escape(stays) if isinstance(stays, str) else Count(normalizer.get("rows", 0))  # "<11" is text
    return (f"<p>Fitted on: {html.escape(normalizer.get('fitted_on', 'train'))}; {hours} hours, ddof "
            f"{normalizer.get('ddof', '')}, sd floor {normalizer.get('std_floor', '')}. Means and sds are shown for "
            f"channels observed in more than {SMALL_CELL} train stays.</p>" +
            _table(["column", "mean", "sd"], normalizer_rows(metadata), "normalizer"))


# --- samples ---------------------------------------------------------------------------------------------------

def series(example: dict) -> tuple[np.ndarray, np.ndarray]:
    """(bins x channels raw values, NaN unobserved; bins x channels mask) of one parsed record."""
    bins, channels = example["timeseries/shape"]
    values = np.asarray(example["timeseries/values"], np.float64).reshape(bins, channels)
    mask = np.asarray(example["timeseries/mask"], np.int64).reshape(bins, channels)
    return values, mask


def pick_samples(folder: str, metadata: dict, n: int) -> list[dict]:
    """N records of SAMPLE_SPLITS (in that order, shard order), paired ones first: reading stops once N paired
    records are found or N + SAMPLE_SCAN records were read, whatever the dataset size."""
    paired, unpaired = [], []
    for example in itertools.islice(records(folder, metadata, SAMPLE_SPLITS), n + SAMPLE_SCAN):
        if len(paired) == n:
            break
        (paired if example.get("has_cxr") == [1] else unpaired).append(example)
        unpaired = unpaired[:n]
    return (paired + unpaired)[:n]


def heatmap_figure(example: dict, channels: list[str]) -> bytes:
    """One record's hourly grid: each channel's values scaled to its own range in the record; grey: not
    observed (mask 0)."""
    plt = _pyplot()
    values, mask = series(example)
    scaled = np.full(values.shape, np.nan)
    for c in range(values.shape[1]):
        observed = mask[:, c].astype(bool) & ~np.isnan(values[:, c])
        if observed.any():
            low, high = values[observed, c].min(), values[observed, c].max()
            scaled[observed, c] = 0.5 if high == low else (values[observed, c] - low) / (high - low)
    colormap = plt.get_cmap("viridis").copy()
    colormap.set_bad("#e5e7e9")
    figure, ax = plt.subplots(figsize=(max(4.0, min(12.0, 0.12 * values.shape[0] + 3)), 3.6))
    ax.imshow(np.ma.masked_invalid(scaled.T), aspect="auto", cmap=colormap, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_yticks(range(len(channels)), channels, fontsize=6)
    ax.set_xlabel("hour of the series (bin)", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(f"{int(mask.sum())} observed cells of {mask.size} (grey: not observed; colour: value scaled "
                 "within the record)", fontsize=8)
    return _png(figure)


def los(example: dict) -> str:
    """The stay's length where the record has it (phenotyping; IHM records leave it out: it is after 48 h)."""
    return f", LOS {example['los_hours'][0]:.1f} h" if "los_hours" in example else ""


def sample_cards(metadata: dict, picked: list[dict], names: list[tuple[str, str]]) -> str:
    if not picked:
        return no_samples("no record's time series, X-ray or labels",
                          "N records' hourly heatmap of the 17 channels and the paired X-ray thumbnail")
    cards = []
    for example, (series_name, image_name) in zip(picked, names):
        positive = [name for name, y in zip(metadata["label_names"], example["labels"]) if y]
        dicom_id = example["cxr/dicom_id"][0].decode() if example.get("cxr/dicom_id") else ""
        image = xray(image_name, dicom_id, missing="<p>no paired X-ray (has_cxr 0)</p>")
        cards.append(
            f'<figure class="series-card">{_figure(series_name, "sample hourly time series")}{image}<figcaption>'
            f'{html.escape(example["split"][0].decode())}, {example["timeseries/hours"][0]:.1f} h series, '
            f'{example["timeseries/shape"][0]} hourly bins{los(example)}<br><i>positive: '
            f'{html.escape(", ".join(positive) or "none")}</i></figcaption></figure>')
    return "".join(cards)


# --- the page --------------------------------------------------------------------------------------------------

def task_rows(metadata: dict) -> list[list]:
    config = metadata["config"]
    return [["cohort", config["cohort"]], ["task", f"{metadata['task']}: {TASKS.get(metadata['task'], '')}"],
            ["record", "one ICU stay: hourly series of the 17 channels (raw values, masks, "
                       f"{len(metadata['feature_names'])} imputed features), labels, has_cxr"],
            ["labels", ", ".join(metadata["label_names"]) if len(metadata["label_names"]) < 4
             else f"{len(metadata['label_names'])} phenotypes"],
            ["X-ray window", metadata["window"]["cxr"]["rule"]],
            ["X-ray views", ", ".join(config.get("views", []))],
            ["images written", "yes" if metadata["image"] else "no"],
            ["train-only normaliser", "fitted (metadata.json)" if metadata["normalizer"] else "none"],
            ["timeseries/normalized stored", "yes" if config.get("normalize_timeseries") else "no"]]


def render(metadata: dict, manifest: list[dict[str, str]], picked: list[dict], names: list[tuple[str, str]]) -> str:
    counts = metadata["counts"]
    los = los_counts(manifest)
    los_shown = protect({**los, "total": counts["matched"]}, [[*los, "total"]], fixed=["total"])
    never = metadata["never_observed_channels"]
    absent = [c for c in metadata["never_in_mimic_iv"] if c in never]
    sections = [
        _section("task", "Task", CARD_STYLE, _table(["", ""], task_rows(metadata), "task")),
        FUNNEL.section(metadata, removals(metadata),
                       "<p>Each step is what is left; the rows before it (−) removed stays since the previous one. "
                       "Drop reasons are tested in this order, so a stay counts once; rejected stays (a conflicting "
                       "row, an unreadable image) are removed before \"written\".</p>"),
        _section("splits", "Splits (patient-disjoint) and pairing",
                 f"<p>{html.escape(metadata['split']['rule'])} (salt <code>"
                 f"{html.escape(str(metadata['split'].get('salt', '')))}</code>). Every written stay is a record: "
                 "the paired set is has_cxr = 1, the partial set all of them.</p>",
                 _table(["split", "stays (partial set)", "patients", "paired (has_cxr = 1)", "unpaired"],
                        split_rows(metadata, manifest), "splits"),
                 "<h3>Split sources</h3><p>Which list decided each written stay's split (testset_iv, valset_iv; "
                 "hash_fallback: a subject in neither, split by the salted hash), recomputed from subject_id with "
                 "the packaged lists and the run's salt.</p>" +
                 _table(["source", *mimic.SPLITS, "total"], source_rows(metadata, manifest), "split-sources")),
        _section("channels", "Channel coverage",
                 "<p>Per channel (channel_order), written stays with at least one observation in the series, their "
                 "share of written stays, and the observed hourly bins over all stays. A never-observed channel is "
                 f"always imputed with its normal value. Never observed: {html.escape(', '.join(never) or 'none')}"
                 f"; of these, no MIMIC-IV item exists for: {html.escape(', '.join(absent) or 'none')}.</p>",
                 _table(["channel", "stays observed", "share of written", "observed bins", ""],
                        channel_rows(metadata), "channels"),
                 _figure("channels.png", "channel coverage"),
                 "<h3>Events</h3>" + _table(["event rows", "rows"], [[k.replace("_", " "), Count(v)] for k, v in
                                                                     counts["events"].items()], "events")),
        _section("labels", "Label prevalence",
                 "<p>Positives among written stays" + (" (the 25 phenotypes: a stay can have several)"
                                                       if len(metadata["label_names"]) > 1 else "") + ".</p>",
                 _table(["label", "positives", "share of written"], label_rows(metadata), "labels"),
                 _figure("labels.png", "label prevalence")),
        _section("los", "ICU length of stay",
                 f"<p>Written stays per LOS bin (outtime − intime); bins of 1 to {SMALL_CELL} stays are not "
                 "drawn.</p>",
                 _table(["LOS", "stays"], [[name, los_shown[name]] for name in (*los, "total")], "los"),
                 _figure("los.png", "ICU length of stay")),
        _section("normalizer", "Normaliser (train only)", normalizer_part(metadata, manifest)),
        samples_section(picked, sample_cards(metadata, picked, names)),
        provenance_section(metadata),
    ]
    banner = (f"{len(picked)} sample records (hourly time series, X-ray thumbnails, labels) below." if picked
              else "")
    return page(metadata, sections, banner)


def build(folder: str, metadata: dict, samples: int, target: str) -> str:
    """Write the card for the run in ``folder`` under ``target``; return the path of index.html."""
    counts = metadata["counts"]
    manifest = read_manifest(folder)
    los = los_counts(manifest)
    los_shown = protect({**los, "total": counts["matched"]}, [[*los, "total"]], fixed=["total"])
    labels = metadata["label_names"]
    figures = {
        "funnel.png": FUNNEL.figure(metadata, removals(metadata)),
        "channels.png": bars_figure("written stays with each channel observed", share_bars({
            channel + (" (never observed)" if channel in metadata["never_observed_channels"] else ""):
                counts["channel_coverage"][channel]["stays"] for channel in metadata["channel_order"]},
            counts["matched"])),
        "labels.png": bars_figure("positives among written stays", share_bars({
            name: counts["label_prevalence"].get(name, 0) for name in labels}, counts["matched"])),
        "los.png": histograms_figure([("written stays per ICU length of stay",
                                       figure_counts(los, {k: los_shown[k] for k in los}))], width=7),
    }
    picked = pick_samples(folder, metadata, samples) if samples > 0 else []
    names = []
    for i, example in enumerate(picked):
        series_name = f"sample-{i:02d}-series.png"
        figures[series_name] = heatmap_figure(example, metadata["channel_order"])
        image_name = f"sample-{i:02d}.png" if example.get("image/encoded") else ""
        if image_name:
            figures[image_name] = thumbnail(example["image/encoded"][0])
        names.append((series_name, image_name))
    return write_card(target, figures, render(metadata, manifest, picked, names))
