"""symile_mimic's metadata.json, the funnel that must add up, and the CLI's funnel table.

The funnel is per admission: admissions = each drop reason (in the order they are tested) + rejected + written.
"""

from __future__ import annotations

from beam_pipeline import mimic
from beam_pipeline.cohorts import funnel as funnel_lib
from beam_pipeline.fileio.metadata import prefixed, split_section, summarize_outputs
from beam_pipeline.options import Config

DATASET = "Symile-MIMIC: hospital admissions with a chest X-ray, a 12-lead ECG and 50 labs"
DROPS = ("no_cxr_in_window", "no_chexpert_row", "no_ecg_in_window", "no_lab_in_window", "no_usable_ecg")
# Rejects of whole admissions; the others are of rows (read/) and images that were never chosen (metadata/).
ADMISSION_STAGES = ("join/", "images/", "ecg/")


def summarize_counts(events: dict[str, int]) -> dict:
    return {
        **funnel_lib.unit_counts(events, "admissions", DROPS, ADMISSION_STAGES),
        "ecg_checked": prefixed(events, "ecg_checked/"),
        "labs_rows": {"read": events.get("rows_read/labevents", 0),
                      "other_itemid": events.get("rows_filtered/labevents", 0),
                      "rejected": events.get("rows_rejected/labevents", 0),
                      "without_valuenum": events.get("labs/without_valuenum", 0),
                      "subject_without_image": events.get("labs/subject_without_image", 0),
                      "kept": events.get("labs/kept", 0)},
        "lab_coverage": {str(itemid): events.get(f"labs_observed/{itemid}", 0) for itemid in mimic.SYMILE_LAB_ITEMIDS},
        "candidates": {"queries": prefixed(events, "candidates/queries/"),
                       "negatives": prefixed(events, "candidates/negatives/"),
                       "short_sets": prefixed(events, "candidates/short_sets/")},
    }


def funnel_steps(c: dict) -> list[tuple[str, int]]:
    """(step, admissions left) in the issue's order: admissions -> with CXR -> with ECG -> with labs -> written."""
    return funnel_lib.steps(c, "admissions", "admissions", (
        ("with a CXR and its labels", ("no_cxr_in_window", "no_chexpert_row")),
        ("with an ECG in window", ("no_ecg_in_window",)), ("with a lab", ("no_lab_in_window",)),
        ("with a usable ECG", ("no_usable_ecg",))))


def check_counts(c: dict, outputs: dict) -> list[str]:
    candidate_rows = {split: outputs.get("candidates", {}).get(split, {}).get("records", 0)
                      for split in ("val", "test")}
    expected_rows = {split: c["candidates"]["queries"].get(split, 0) + c["candidates"]["negatives"].get(split, 0)
                     for split in ("val", "test")}
    labs = c["labs_rows"]
    return funnel_lib.identity_problems(c, outputs, "admissions", (
        ("candidate queries == val + test written", sum(c["candidates"]["queries"].values()),
         c["per_split"]["val"] + c["per_split"]["test"]),
        ("candidate rows == queries + negatives", candidate_rows, expected_rows),
        ("labevents rows == other itemid + rejected + without valuenum + subject without image + kept",
         labs["read"], labs["other_itemid"] + labs["rejected"] + labs["without_valuenum"]
         + labs["subject_without_image"] + labs["kept"])))


def document(config: Config, features: dict, windows: dict, events: dict[str, int], input_files: list[dict],
             files: list[dict], ecdf) -> dict:
    counts = summarize_counts(events)
    outputs = summarize_outputs(files, config.output)
    return funnel_lib.document(
        DATASET, config, input_files, features, counts, funnel_steps(counts), split_section(config, events, counts),
        outputs, check_counts(counts, outputs),
        windows={name: window.as_dict() for name, window in windows.items()}, label_order=list(mimic.LABELS),
        symile_label_order=list(mimic.SYMILE_LABELS), lab_itemids=list(mimic.SYMILE_LAB_ITEMIDS),
        ecg_leads=list(mimic.ECG_LEADS), ecdf=ecdf.summary(),
        candidates={"splits": ["val", "test"], "seed": config.candidate_seed, "negatives": config.candidate_negatives,
                    "rule": "per query: itself (label 1), then negatives drawn without replacement from the other "
                            "written admissions of its split by random.Random(sha256(f'{seed}:{hadm_id}'))"})


def empty_message(document: dict) -> str:
    return funnel_lib.empty_message(document, funnel_steps(document["counts"]), "admissions")


def funnel(counts: dict, config: dict) -> str:
    return funnel_lib.table(funnel_steps(counts), counts, width=36)
