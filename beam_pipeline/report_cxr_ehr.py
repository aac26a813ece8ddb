"""The cxr_ehr data card: ``report.build`` (``python -m beam_pipeline.report OUTPUT``) comes here when the run's
config["cohort"] is cxr_ehr (issue #15: feature coverage for cxr_ehr).

Sections: dataset (what a record is, the views, the matching rule, outcomes, feature sets), funnel (per image, in
metadata.json's funnel order: images of a kept view, with a patients row, gender and age, written; each step's drop
reasons and the image rejects before "written"; every reject line by stage), splits (images and patients),
feature coverage (written images per view and orientation, "missing" included, gender, 10-year age bin, inside an
admission, inside an ICU stay; the matching rule), outcomes (whether they were written; if so only how many images
have a value: they lie in the image's future and are no features), feature sets (widths, outcome columns, rows),
samples, provenance.

Same rules as the other cards (report.py, whose helpers this uses): aggregates only by default and every count from
1 to 10 shown as "<11". Counts that add up to a shown total (a funnel step and the removals before it, the reject
lines, the split columns, each variable's categories and the written images) get complementary suppression
(report_cards.protect): no suppressed count follows by subtraction from one relation; a share is hidden with its
count. ``--samples N`` adds N records' X-ray thumbnails with their raw variables (val, then test, then train; never
their outcomes) and marks the page "contains patient data".
"""

from __future__ import annotations

import html

from beam_pipeline import mimic
from beam_pipeline.cohorts import cxr_ehr
from beam_pipeline.cohorts import cxr_ehr_features as ehr
from beam_pipeline.report import (SUPPRESSED, Count, _bars, _figure, _png, _pyplot, _section, _table, page,
                                  read_manifest, split_method, write_card)
from beam_pipeline.report_cards import (UnitFunnel, figure_counts, images_written, no_samples, protect,
                                        provenance_section, sample_thumbnails, samples_section, shared, split_line,
                                        split_rows, xray)

WRITTEN = "written"  # the key of the written images among the cells (the page header shows them: never hidden)
IN_ADMISSION, IN_ICU = "inside an admission", "inside an ICU stay"
# variable -> (title, (category, feature_coverage key) in display order); each variable's categories add up to
# the written images
COVERAGE: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "view": ("view", tuple((v, f"features/view/{v}") for v in (*ehr.VIEWS, ehr.MISSING))),
    "orientation": ("orientation",
                    tuple((o, f"features/orientation/{o}") for o in (*ehr.ORIENTATIONS, ehr.MISSING))),
    "gender": ("gender", tuple((g, f"features/gender/{g}") for g in ehr.GENDERS)),
    "age": ("age (10-year bin)", tuple((b, f"features/ageR10/{b}") for b in ehr.AGE_R10_LABELS)),
    "admission": (IN_ADMISSION, (("yes", "features/in_admission"), ("no", "features/no_admission"))),
    "icu": (IN_ICU, (("yes", "features/in_icu"), ("no", "features/no_icu"))),
}
# an outcome -> the variable whose "yes" images are those that can have it (equal counts are protected alike)
OUTCOME_OF = {"outcome_hospital_expire_flag": "admission", "outcome_icu_los_days": "icu"}
OUTCOME_TITLES = {"outcome_hospital_expire_flag": "the admission's hospital_expire_flag (died in hospital)",
                  "outcome_icu_los_days": "the ICU stay's length in days"}
CARD_STYLE = ("<style>table.dataset td,table.feature-sets td,table.matching td,table.outcomes td:nth-child(2)"
              "{text-align:left}</style>")


# --- funnel ----------------------------------------------------------------------------------------------------

FUNNEL = UnitFunnel(noun="image", unit="images", one="an image", first="images_kept_view", drops=ehr.DROPS,
                    funnel_steps=cxr_ehr.funnel_steps, unit_stages=cxr_ehr.UNIT_STAGES)


# --- feature coverage and outcomes -----------------------------------------------------------------------------

def categories(metadata: dict, variable: str) -> tuple[tuple[str, str], ...]:
    """The variable's (category, key): the known ones in order, then any other its counts name (none expected)."""
    known = COVERAGE[variable][1]
    prefix = known[0][1].rsplit("/", 1)[0] + "/"
    taken = {key for _, key in known}
    extra = sorted(k for k in metadata["counts"]["feature_coverage"] if k.startswith(prefix) and k not in taken
                   and variable not in ("admission", "icu"))
    return known + tuple((k[len(prefix):], k) for k in extra)


def outcome_counts(metadata: dict, manifest: list[dict[str, str]]) -> dict[str, int]:
    """Written images with a value per outcome (a non-empty manifest column; only these sums leave here), or {}
    when the run wrote no outcomes."""
    return {name: sum(bool(row.get(name)) for row in manifest) for name in metadata.get("outcomes") or ()}


def coverage_cells(metadata: dict, manifest: list[dict[str, str]]) -> dict:
    """Every coverage and outcome cell as shown, protected together: keys ("coverage", variable, category),
    ("outcome", name, "with" / "without") and WRITTEN (fixed). Relations: each variable's categories add up to the
    written images, so do an outcome's images with and without a value; an outcome's counts equal to its
    variable's yes / no counts (ICU LOS: the images in an ICU stay) are hidden alike."""
    counts = metadata["counts"]
    coverage, matched = counts["feature_coverage"], counts["matched"]
    values, relations = {WRITTEN: matched}, []
    for variable in COVERAGE:
        keys = []
        for category, key in categories(metadata, variable):
            values[("coverage", variable, category)] = coverage.get(key, 0)
            keys.append(("coverage", variable, category))
        relations.append([WRITTEN, *keys])
    for name, n in outcome_counts(metadata, manifest).items():
        values[("outcome", name, "with")], values[("outcome", name, "without")] = n, matched - n
        relations.append([WRITTEN, ("outcome", name, "with"), ("outcome", name, "without")])
        variable = OUTCOME_OF.get(name)
        for side, category in (("with", "yes"), ("without", "no")):
            twin = ("coverage", variable, category)
            if variable and values.get(twin) == values[("outcome", name, side)]:
                relations.append([("outcome", name, side), twin])
    return protect(values, relations, fixed=[WRITTEN])


def coverage_rows(metadata: dict, manifest: list[dict[str, str]]) -> list[list]:
    """Per variable and category: written images (as shown) and their share of the written images."""
    shown, coverage = coverage_cells(metadata, manifest), metadata["counts"]["feature_coverage"]
    matched = metadata["counts"]["matched"]
    rows = []
    for variable, (title, _) in COVERAGE.items():
        for category, key in categories(metadata, variable):
            cell = shown[("coverage", variable, category)]
            rows.append([title, category, cell, shared(cell, coverage.get(key, 0), matched)])
    return rows


def outcome_rows(metadata: dict, manifest: list[dict[str, str]]) -> list[list]:
    shown = coverage_cells(metadata, manifest)
    return [[name, OUTCOME_TITLES.get(name, ""), shown[("outcome", name, "with")],
             shown[("outcome", name, "without")]] for name in outcome_counts(metadata, manifest)]


def coverage_figure(metadata: dict, manifest: list[dict[str, str]]) -> bytes:
    """One small bar panel per variable, each bar as the table shows it (hidden bars not drawn, labelled)."""
    plt = _pyplot()
    shown, coverage = coverage_cells(metadata, manifest), metadata["counts"]["feature_coverage"]
    figure, axes = plt.subplots(2, 3, figsize=(13, 6.4), layout="constrained")
    for ax, (variable, (title, _)) in zip(axes.reshape(-1), COVERAGE.items()):
        found = {category: coverage.get(key, 0) for category, key in categories(metadata, variable)}
        _bars(ax, figure_counts(found, {c: shown[("coverage", variable, c)] for c in found}), title)
    figure.suptitle(f"Written images per category (bars {SUPPRESSED} or suppressed: not drawn)", fontsize=10)
    return _png(figure)


# --- feature sets ----------------------------------------------------------------------------------------------

def size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return ""


def feature_set_rows(metadata: dict) -> list[list]:
    """The TFRecords' ehr/features vector, then per --feature_sets name: width, columns, outcome columns, rows and
    bytes written."""
    written = metadata["outputs"].get("features", {})
    columns = metadata["feature_columns"]
    rows = [["TFRecords ehr/features", f"{len(columns)} columns", ", ".join(columns), "none",
             Count(metadata["counts"]["matched"]), ""]]
    for name, set_columns in metadata["feature_sets"].items():
        future = [c for c in set_columns if c in ehr.OUTCOME_COLUMNS]
        files = written.get(name, {})
        rows.append([f"features/{name}-*.csv", f"{len(set_columns)} columns", ", ".join(set_columns),
                     ", ".join(future) or "none", Count(files.get("records", 0)), size(files.get("bytes", 0))])
    return rows


def feature_sets_part(metadata: dict) -> str:
    if not metadata["feature_sets"]:
        return ("<p>No feature CSVs written (no --feature_sets). Each record's TFRecord holds the encoded variables "
                "(ehr/features).</p>" + _table(["file", "width", "columns", "outcome columns", "rows", "size"],
                                               feature_set_rows(metadata), "feature-sets"))
    with_outcomes = [name for name, columns in metadata["feature_sets"].items()
                     if set(columns) & set(ehr.OUTCOME_COLUMNS)]
    warning = (f'<p class="warn">{html.escape(", ".join(with_outcomes))}: alive/died is the admission\'s eventual '
               "death, an outcome in the future of the image (the original's layout keeps it in these sets), not a "
               "feature known when the image was taken.</p>" if with_outcomes else "")
    return ("<p>The original's CSVs (first column the image path relative to --mimic_cxr_root, then the vector; a "
            "missing view or orientation is the all-zero group, so widths match the original's), and the "
            "TFRecords' encoded variables (ehr/features, feature_columns order, view_missing and "
            "orientation_missing included).</p>" + warning +
            _table(["file", "width", "columns", "outcome columns", "rows", "size"], feature_set_rows(metadata),
                   "feature-sets"))


# --- dataset, matching, outcomes -------------------------------------------------------------------------------

def views_text(config: dict) -> str:
    views = config.get("views", [])
    return ("every view (--views=*; a blank ViewPosition kept as the category missing)" if mimic.ALL_VIEWS in views
            else ", ".join(views))


def dataset_rows(metadata: dict) -> list[list]:
    config, outcomes = metadata["config"], metadata.get("outcomes")
    return [["cohort", config["cohort"]], ["dataset", metadata["dataset"]],
            ["record", "one CXR image with the EHR variables known at its time: gender, age in the study's year "
                       "and its bins, view, orientation, the admission and ICU stay it falls in"],
            ["views", views_text(config)],
            ["EHR match (--ehr_match)", f"{config.get('ehr_match', '')}: "
                                        f"{metadata['ehr_match']['admission']['rule']}"],
            ["outcomes (--include_outcomes)", f"written, apart from the features: {', '.join(outcomes)}" if outcomes
             else "not written"],
            ["feature sets (--feature_sets)", ", ".join(metadata["feature_sets"]) or "none"],
            ["images written", images_written(metadata)], ["split", split_line(metadata)]]


def matching_rows(metadata: dict) -> list[list]:
    return [[name.replace("_", " "), rule["rule"], rule["key"]] for name, rule in metadata["ehr_match"].items()]


def outcomes_part(metadata: dict, manifest: list[dict[str, str]]) -> str:
    outcomes = metadata.get("outcomes")
    if not outcomes:
        return ("<p>No outcomes written (the run had no --include_outcomes): every record holds only what was known "
                "when its image was taken.</p>")
    return ("<p>Written because of --include_outcomes, as <code>outcome/*</code> in the TFRecords and "
            "<code>outcome_*</code> manifest columns: " + html.escape(", ".join(outcomes)) + ". They lie in the "
            "image's future (what happened after it was taken), so they are outcomes, never features: use them as "
            "targets only. This card shows no outcome statistics, only how many written images have a value (the "
            "others are in no admission or no ICU stay).</p>" +
            _table(["outcome", "what", "images with a value", "images without"], outcome_rows(metadata, manifest),
                   "outcomes"))


# --- samples ---------------------------------------------------------------------------------------------------

def variables(example: dict, columns: list[str]) -> dict[str, str]:
    """One parsed record's raw variables (known at its time; never its outcomes)."""
    encoded = dict(zip(columns, example["ehr/features"]))
    category = lambda names: next((n for n in names if encoded.get(n) == 1.0), ehr.MISSING)  # noqa: E731
    age = int(example["ehr/age"][0])
    return {"split": example["split"][0].decode(), "study time": example["study_datetime"][0].decode(),
            "ViewPosition": example["view_position"][0].decode() or "(blank)", "view": category(ehr.VIEWS),
            "orientation": category(ehr.ORIENTATIONS), "gender": example["ehr/gender"][0].decode(),
            "age": f"{age} ({ehr.age_bin(age, ehr.AGE_R10_EDGES, ehr.AGE_R10_LABELS)})",
            IN_ADMISSION: "yes" if example["ehr/hadm_id"][0] >= 0 else "no",
            IN_ICU: "yes" if example["ehr/stay_id"][0] >= 0 else "no"}


def sample_cards(metadata: dict, picked: list[dict], names: list[str]) -> str:
    if not picked:
        return no_samples("no record's X-ray or variables",
                          "N records' X-ray thumbnails with their raw variables (never their outcomes)")
    cards = []
    for example, name in zip(picked, names):
        dicom_id = example["dicom_id"][0].decode()
        image = xray(name, dicom_id)
        shown = "<br>".join(f"{html.escape(k)}: {html.escape(v)}"
                            for k, v in variables(example, metadata["feature_columns"]).items())
        cards.append(f'<figure class="card">{image}<figcaption><b>{html.escape(dicom_id[:17])}…</b><br>{shown}'
                     "</figcaption></figure>")
    return '<div class="grid">' + "".join(cards) + "</div>"


# --- the page --------------------------------------------------------------------------------------------------

def render(metadata: dict, manifest: list[dict[str, str]], picked: list[dict], names: list[str]) -> str:
    counts, config = metadata["counts"], metadata["config"]
    other = ("" if mimic.ALL_VIEWS in config.get("views", []) else
             f" Metadata rows of other views, not kept: {Count(counts.get('images_other_view', 0))}.")
    sections = [
        _section("dataset", "Dataset", CARD_STYLE, _table(["", ""], dataset_rows(metadata), "dataset")),
        FUNNEL.section(metadata, FUNNEL.removals(metadata),
                       f"<p>Each step is what is left; the rows before it (−) removed images since the previous one. "
                       f"Images of a kept view: {html.escape(views_text(config))}.{other} Drop reasons are tested in "
                       "this order, so an image counts once; rejected images (a bad study time, a conflicting row or "
                       "one rejected when read, a repeated dicom_id, an unreadable JPEG) are removed before "
                       "\"written\".</p>"),
        _section("splits", "Splits (patient-disjoint)", split_method(metadata.get("split")),
                 _table(["split", "images", "patients"], split_rows(metadata, FUNNEL.unit), "splits")),
        _section("coverage", "Feature coverage",
                 f"<p>Written images per category of each variable, all known when the image was taken; each "
                 f"variable's categories add up to the {Count(counts['matched'])} written images. View: "
                 f"ViewPosition if one of {', '.join(ehr.VIEWS)}, else missing (blank included); orientation: "
                 f"{' or '.join(ehr.ORIENTATIONS)}, else missing: missing is a category of its own, never imputed. "
                 "Age in the study's year (top-coded patients stay 91), in the original's right-closed bins (20 "
                 "is &lt;20, 90 is 80-90). Inside an admission / ICU stay: by the matching rule below.</p>",
                 _table(["variable", "category", "images", "share of written"], coverage_rows(metadata, manifest),
                        "coverage"),
                 _figure("coverage.png", "feature coverage"),
                 "<h3>Matching rule (--ehr_match)</h3>" +
                 _table(["interval", "an image is inside when", "id"], matching_rows(metadata), "matching")),
        _section("outcomes", "Outcomes", outcomes_part(metadata, manifest)),
        _section("feature-sets", "Feature sets written", feature_sets_part(metadata)),
        samples_section(picked, sample_cards(metadata, picked, names)),
        provenance_section(metadata),
    ]
    banner = f"{len(picked)} sample records (X-ray thumbnails, raw variables) below." if picked else ""
    return page(metadata, sections, banner)


def build(folder: str, metadata: dict, samples: int, target: str) -> str:
    """Write the card for the run in ``folder`` under ``target``; return the path of index.html."""
    manifest = read_manifest(folder)
    picked, names, thumbnails = sample_thumbnails(folder, metadata, samples)
    figures = {"funnel.png": FUNNEL.figure(metadata, FUNNEL.removals(metadata)),
               "coverage.png": coverage_figure(metadata, manifest), **thumbnails}
    return write_card(target, figures, render(metadata, manifest, picked, names))
