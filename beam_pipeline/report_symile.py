"""The symile_mimic data card: ``report.build`` (``python -m beam_pipeline.report OUTPUT``) comes here when the run's
config["cohort"] is symile_mimic.

Sections: funnel (per admission, in metadata.json's funnel order, each step's drop reasons and rejects), splits, lab
coverage (the 50 itemids: written records with the lab, train values, train-ECDF median), ECGs (check outcomes and
the signal), retrieval candidate sets, samples, provenance. Same rules as the ED card (report.py, whose helpers this
uses): aggregates only by default, every count from 1 to 10 shown as "<11", a median only over 11 or more values.
The funnel and the split table get complementary suppression (report_cards): no suppressed count follows by
subtraction from one step, the next and the removals between them, nor from a split column and its total; a split
whose admissions are hidden shows its other split counts, its candidate counts (and train its lab values) hidden
too. A lab in all but 1 to 10 of the written records (or train admissions) shows "all but <11", in the figure too.
The ECG section then shows per-lead mean and sd over the first ECG_AGGREGATE_RECORDS records; ``--samples N`` adds
one record's 12-lead strip and N records' X-ray thumbnails and labels, and marks the page "contains patient data".
"""

from __future__ import annotations

import html
import math

import numpy as np

from beam_pipeline import mimic
from beam_pipeline.cohorts.symile_metadata import ADMISSION_STAGES, DROPS, funnel_steps
from beam_pipeline.report import (PHI_BANNER, SMALL_CELL, SUPPRESSED, Count, _figure, _png, _pyplot, _section,
                                  _table, cells, label_text, page, read_manifest, sample_records, split_method,
                                  write_card)
from beam_pipeline.report_cards import (UnitFunnel, bars_figure, hidden_splits, no_samples, of_total,
                                        provenance_section, sample_thumbnails, samples_section, share_bars, split_rows,
                                        xray)

# The 50 itemids' names as cohort-definitions.md §A.5 lists them (the original's constants.py LABS; mimic-schemas.md
# §3.4 hosp/d_labitems is the table that names itemids). "H", "L" and "I" are the serum index items.
LAB_NAMES = {
    51221: "Hematocrit", 51265: "Platelet Count", 50912: "Creatinine", 50971: "Potassium", 51222: "Hemoglobin",
    51301: "White Blood Cells", 51249: "MCHC", 51279: "Red Blood Cells", 51250: "MCV", 51248: "MCH", 51277: "RDW",
    51006: "Urea Nitrogen", 50983: "Sodium", 50902: "Chloride", 50882: "Bicarbonate", 50868: "Anion Gap",
    50931: "Glucose", 50960: "Magnesium", 50893: "Calcium, Total", 50970: "Phosphate", 51237: "INR(PT)",
    51274: "PT", 51275: "PTT", 51146: "Basophils", 51256: "Neutrophils", 51254: "Monocytes", 51200: "Eosinophils",
    51244: "Lymphocytes", 52172: "RDW-SD", 50934: "H", 51678: "L", 50947: "I", 50861: "ALT", 50878: "AST",
    50813: "Lactate", 50863: "Alkaline Phosphatase", 50885: "Bilirubin, Total", 50820: "pH", 50862: "Albumin",
    50802: "Base Excess", 50821: "pO2", 50804: "Calculated Total CO2", 50818: "pCO2",
    52075: "Absolute Neutrophil Count", 52073: "Absolute Eosinophil Count", 52074: "Absolute Monocyte Count",
    52069: "Absolute Basophil Count", 51133: "Absolute Lymphocyte Count", 50910: "Creatine Kinase (CK)",
    52135: "Immature Granulocytes",
}
ECG_AGGREGATE_RECORDS = 100  # read for the per-lead aggregate: bounded, whatever the dataset size
ECG_STRIP = "sample-ecg.png"
FUNNEL = UnitFunnel(noun="admission", unit="admissions", one="an admission", first="admissions", drops=DROPS,
                    funnel_steps=funnel_steps, unit_stages=ADMISSION_STAGES,
                    other_rejects="no (a row or an ECG tried)")
SPLIT_COLUMNS = (("X-ray images", "cxr_dicom_id"), ("ECGs", "ecg_study_id"))  # split table column, manifest column


def with_total(parts: dict[str, int], total_name: str = "total") -> list[list]:
    """Rows of parts that add up to a shown total (small-cell and complementary suppression), then the total."""
    return [[name, shown] for name, shown in zip(parts, cells(list(parts.values())))] + \
        [[total_name, sum(parts.values())]]


def lab_name(itemid) -> str:
    return LAB_NAMES.get(int(itemid), "")


def lab_rows(metadata: dict) -> list[list]:
    """Per itemid: name, written records with it (count, share), train values and their median (only over 11 or
    more values: a median of fewer is too close to one patient's value). Records and train values are out of a
    shown total (the written and the train admissions), so one in all but a few is "all but <11" (of_total). A
    train record has one value per itemid, so when the split table hides the train admissions the train values show
    its mark (hidden_splits)."""
    counts = metadata["counts"]
    coverage, matched, admissions = counts["lab_coverage"], counts["matched"], counts["per_split"]["train"]
    per_itemid = metadata["ecdf"]["per_itemid"]
    train = hidden_splits(metadata, FUNNEL.unit).get("train")
    rows = []
    for itemid in metadata["lab_itemids"]:
        n = coverage.get(str(itemid), 0)
        fitted = per_itemid.get(str(itemid), {})
        n_train, median = fitted.get("n_train_values", 0), fitted.get("median")
        shown = "–" if median is None else f"{SUPPRESSED} values" if n_train <= SMALL_CELL else f"{median:,.4g}"
        rows.append([str(itemid), lab_name(itemid), *of_total(n, matched),
                     train or of_total(n_train, admissions)[0], shown])
    return rows


def lab_figure_counts(metadata: dict) -> dict[str, int]:
    """The labs.png bars (lab_rows' records): one in all but a few written records is not drawn (share_bars)."""
    coverage = metadata["counts"]["lab_coverage"]
    return share_bars({f"{lab_name(itemid) or itemid}": coverage.get(str(itemid), 0)
                       for itemid in metadata["lab_itemids"]}, metadata["counts"]["matched"])


def distinct_per_split(manifest: list[dict[str, str]]) -> dict[str, dict[str, int]]:
    """The split table's SPLIT_COLUMNS: column -> split -> distinct ids in the manifest."""
    return {name: {split: len({r[column] for r in manifest if r["split"] == split}) for split in mimic.SPLITS}
            for name, column in SPLIT_COLUMNS}


def candidate_rows(metadata: dict) -> list[list]:
    """Per candidate split: queries, negatives, rows written, short sets; those of a split whose admissions the
    split table hides show its mark (a split's queries are its admissions)."""
    found, written = metadata["counts"]["candidates"], metadata["outputs"].get("candidates", {})
    left_out = hidden_splits(metadata, FUNNEL.unit)
    return [[split, *([left_out[split]] * 4 if split in left_out else
                      [found["queries"].get(split, 0), found["negatives"].get(split, 0),
                       written.get(split, {}).get("records", 0), found["short_sets"].get(split, 0)])]
            for split in metadata["candidates"]["splits"]]


# --- ECG -----------------------------------------------------------------------------------------------------

def ecg_signal(example: dict) -> tuple[np.ndarray, list[str], float]:
    """(samples x leads array, lead names, Hz) of one parsed record."""
    shape = example["ecg/shape"]
    signal = np.asarray(example["ecg/signal"], np.float32).reshape(shape[0], shape[1])
    return signal, [name.decode() for name in example["ecg/lead_names"]], float(example["ecg/sampling_hz"][0])


def lead_summary(examples: list[dict]) -> dict[str, dict[str, float]]:
    """Per lead over the records: mean and sd of every sample, median of each record's peak-to-peak."""
    signals = [ecg_signal(e) for e in examples]
    leads = signals[0][1]
    stacked = np.stack([s for s, _, _ in signals])  # records x samples x leads
    peak = np.ptp(stacked, axis=1)
    return {lead: {"mean": float(stacked[:, :, i].mean()), "sd": float(stacked[:, :, i].std()),
                   "peak_to_peak": float(np.median(peak[:, i]))} for i, lead in enumerate(leads)}


def ecg_strip_figure(example: dict) -> bytes:
    """One record's 12 leads, each over the whole recording, two columns."""
    plt = _pyplot()
    signal, leads, hz = ecg_signal(example)
    seconds = np.arange(signal.shape[0]) / hz
    rows = math.ceil(len(leads) / 2)
    figure, axes = plt.subplots(rows, 2, figsize=(11, 0.8 * rows + 0.6), sharex=True)
    for i, ax in enumerate(axes.T.reshape(-1)):
        if i >= len(leads):
            ax.axis("off")
            continue
        ax.plot(seconds, signal[:, i], linewidth=0.5, color="#222")
        ax.set_ylabel(leads[i], rotation=0, ha="right", va="center", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("seconds", fontsize=8)
    return _png(figure)


def lead_figure(summary: dict[str, dict[str, float]], unit: str) -> bytes:
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(8, 2.8))
    leads = list(summary)
    ax.errorbar(range(len(leads)), [summary[lead]["mean"] for lead in leads],
                yerr=[summary[lead]["sd"] for lead in leads], fmt="o", capsize=3, color="#2e86c1")
    ax.set_xticks(range(len(leads)), leads, fontsize=8)
    ax.set_ylabel(unit, fontsize=8)
    ax.set_title("ECG amplitude per lead: mean ± sd over all samples of the records read", fontsize=10)
    return _png(figure)


def ecg_unit(metadata: dict) -> str:
    return "mV" if metadata["config"].get("ecg_scaling", "none") == "none" else "scaled units (--ecg_scaling)"


def ecg_part(metadata: dict, summary: dict | None, records_read: int, picked: list[dict]) -> str:
    """With samples, one record's strip; otherwise the per-lead summary (over more than SMALL_CELL records)."""
    unit = ecg_unit(metadata)
    if picked:
        signal, leads, hz = ecg_signal(picked[0])
        return (f"<p>One {html.escape(picked[0]['split'][0].decode())} record: {len(leads)} leads, "
                f"{signal.shape[0] / hz:g} s at {hz:g} Hz ({unit}).</p>" + _figure(ECG_STRIP, "sample ECG strip"))
    how = ("<p>No record's signal on this page. <code>python -m beam_pipeline.report OUTPUT --samples N</code> "
           f"adds one record's 12-lead strip and marks the page \"{PHI_BANNER.lower()}\".</p>")
    if summary is None:
        return f"<p>Fewer than {SMALL_CELL + 1} records written: no per-lead summary.</p>" + how
    rows = [[lead, f"{v['mean']:.3f}", f"{v['sd']:.3f}", f"{v['peak_to_peak']:.3f}"] for lead, v in summary.items()]
    return (f"<p>Per lead over the first {Count(records_read)} records (train first, shard order; {unit}).</p>" +
            _table(["lead", "mean", "sd", "median peak-to-peak"], rows, "ecg-leads") +
            _figure("ecg-leads.png", "ECG amplitude per lead") + how)


# --- samples -------------------------------------------------------------------------------------------------

def sample_cards(picked: list[dict], names: list[str]) -> str:
    if not picked:
        return no_samples("no record's ECG, X-ray, labels or labs",
                          "one record's 12-lead ECG strip and N records' X-ray thumbnails and labels")
    cards = []
    for example, name in zip(picked, names):
        labels = label_text(example["labels/symile"], mimic.SYMILE_LABELS)
        dicom_id = example["dicom_id"][0].decode()
        image = xray(name, dicom_id, missing="")
        cards.append(
            f'<figure class="card">{image}<figcaption><b>{html.escape(dicom_id[:17])}…</b> '
            f'{html.escape(example["view_position"][0].decode())}, {html.escape(example["split"][0].decode())}<br>'
            f'<i>{html.escape(labels)}</i><br>{sum(example["labs/observed"])} of {len(example["labs/observed"])} '
            f'labs measured; ECG study {example["ecg/study_id"][0]}</figcaption></figure>')
    return '<div class="grid">' + "".join(cards) + "</div>"


# --- the page ------------------------------------------------------------------------------------------------

def render(metadata: dict, columns: dict[str, dict[str, int]], summary: dict | None, records_read: int,
           picked: list[dict], names: list[str]) -> str:
    """The page; ``columns``: the split table's distinct_per_split."""
    counts = metadata["counts"]
    never = metadata["ecdf"].get("never_observed", [])
    sections = [
        FUNNEL.section(metadata, FUNNEL.removals(metadata),
                       "<p>Each step is what is left; the rows before it (−) removed admissions since the previous "
                       "one. Drop reasons are tested in this order, so an admission counts once.</p>"),
        _section("splits", "Splits (patient-disjoint)", split_method(metadata.get("split")),
                 _table(["split", FUNNEL.unit, *columns, "patients"], split_rows(metadata, FUNNEL.unit, columns),
                        "splits")),
        _section("labs", "Lab coverage",
                 f"<p>Per itemid (ascending: the order of every lab vector), written records with a value in the "
                 f"window, the train values the ECDF was fitted on and their median (shown over more than "
                 f"{SMALL_CELL} values). {html.escape(metadata['windows']['labs']['rule'])}. Names: "
                 "cohort-definitions.md §A.5; H, L and I are the serum index items.</p>",
                 _table(["itemid", "name", "records", "share of written", "train values", "train median"],
                        lab_rows(metadata), "labs"),
                 _figure("labs.png", "lab coverage"),
                 f"<p>Never measured in train: {html.escape(', '.join(map(str, never)) or 'none')}.</p>",
                 "<h3>labevents rows</h3>" + _table(["", "rows"], with_total(
                     {k.replace("_", " "): v for k, v in counts["labs_rows"].items() if k != "read"},
                     "read"), "lab-rows")),
        _section("ecg", "ECGs",
                 f"<p>{html.escape(metadata['windows']['ecg']['rule'])}. Each admission's in-window ECGs are read "
                 "in that order until one is usable (no NaN, not all zero, the expected shape).</p>",
                 _table(["check outcome", "ECGs read"], with_total(counts["ecg_checked"]), "ecg-checks"),
                 ecg_part(metadata, summary, records_read, picked)),
        _section("candidates", "Retrieval candidate sets",
                 f"<p>Seed {metadata['candidates']['seed']}, {metadata['candidates']['negatives']} negatives per "
                 f"query: {html.escape(metadata['candidates']['rule'])}. A short set has fewer negatives (a split "
                 "with too few admissions).</p>",
                 _table(["split", "queries", "negatives", "rows written", "short sets"], candidate_rows(metadata),
                        "candidates")),
        samples_section(picked, sample_cards(picked, names)),
        provenance_section(metadata, "<h3>Windows</h3>" + _table(["window", "rule"], [
            [name, w["rule"]] for name, w in metadata["windows"].items()], "windows")),
    ]
    banner = f"{len(picked)} sample records (an ECG strip, X-ray thumbnails, labels) below." if picked else ""
    return page(metadata, sections, banner)


def build(folder: str, metadata: dict, samples: int, target: str) -> str:
    """Write the card for the run in ``folder`` under ``target``; return the path of index.html."""
    figures = {
        "funnel.png": FUNNEL.figure(metadata, FUNNEL.removals(metadata)),
        "labs.png": bars_figure("written records with each lab", lab_figure_counts(metadata)),
    }
    picked, names, thumbnails = sample_thumbnails(folder, metadata, samples)
    figures.update(thumbnails)
    aggregate = [] if picked else sample_records(folder, metadata, ECG_AGGREGATE_RECORDS, ("train", "val", "test"))
    summary = lead_summary(aggregate) if len(aggregate) > SMALL_CELL else None
    if picked:
        figures[ECG_STRIP] = ecg_strip_figure(picked[0])
    elif summary:
        figures["ecg-leads.png"] = lead_figure(summary, ecg_unit(metadata))
    columns = distinct_per_split(read_manifest(folder))
    return write_card(target, figures, render(metadata, columns, summary, len(aggregate), picked, names))
