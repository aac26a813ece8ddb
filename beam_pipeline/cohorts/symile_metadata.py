"""symile_mimic's metadata.json, the funnel that must add up, and the CLI's funnel table.

The funnel is per admission: admissions = each drop reason (in the order they are tested) + rejected + written.
"""

from __future__ import annotations

from beam_pipeline import mimic
from beam_pipeline.fileio.metadata import (CountsError, image_section, prefixed, split_section, summarize_outputs,
                                           versions)
from beam_pipeline.options import Config
from beam_pipeline.transforms.examples import feature_spec_json

DROPS = ("no_cxr_in_window", "no_chexpert_row", "no_ecg_in_window", "no_lab_in_window", "no_usable_ecg")
# Rejects of whole admissions; the others are of rows (read/), images that were never chosen (metadata/) and ECGs
# whose admission went on to the next one (ecg_check/).
ADMISSION_STAGES = ("join/", "images/", "ecg/")


def summarize_counts(events: dict[str, int]) -> dict:
    rejects = prefixed(events, "rejects/")
    admission_rejects = {k: v for k, v in rejects.items() if k.startswith(ADMISSION_STAGES)}
    return {
        "admissions": events.get("admissions", 0),
        "dropped": {reason: events.get(f"dropped/{reason}", 0) for reason in DROPS},
        "rejected": sum(admission_rejects.values()),
        "rejected_by_reason": admission_rejects,
        "matched": events.get("matched", 0),
        "per_split": {s: events.get(f"per_split/{s}", 0) for s in mimic.SPLITS},
        "patients_per_split": {s: events.get(f"patients/{s}", 0) for s in mimic.SPLITS},
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
        "images_kept_view": events.get("images_kept_view", 0),
        "images_other_view": events.get("images_other_view", 0),
        "rows_read": prefixed(events, "rows_read/"),
        "rows_rejected": prefixed(events, "rows_rejected/"),
        "rows_filtered": prefixed(events, "rows_filtered/"),
        "lines_read": prefixed(events, "lines_read/"),
        "duplicates": {"identical_rows": prefixed(events, "duplicates/identical_rows/"),
                       "conflicting_keys": prefixed(events, "duplicates/conflicting_keys/"),
                       "repeated_dicom_id": prefixed(events, "duplicates/repeated_dicom_id/")},
        "rejects_total": sum(rejects.values()),
        "rejects_by_stage_reason": rejects,
    }


def funnel_steps(c: dict) -> list[tuple[str, int]]:
    """(step, admissions left) in the issue's order: admissions -> with CXR -> with ECG -> with labs -> written."""
    left, steps = c["admissions"], [("admissions", c["admissions"])]
    for label, reasons in (("with a CXR and its labels", ("no_cxr_in_window", "no_chexpert_row")),
                           ("with an ECG in window", ("no_ecg_in_window",)), ("with a lab", ("no_lab_in_window",)),
                           ("with a usable ECG", ("no_usable_ecg",))):
        left -= sum(c["dropped"][r] for r in reasons)
        steps.append((label, left))
    steps.append(("written", c["matched"]))
    return steps


def check_counts(c: dict, outputs: dict) -> list[str]:
    written = {split: outputs.get("tfrecords", {}).get(split, {}).get("records", 0) for split in mimic.SPLITS}
    candidate_rows = {split: outputs.get("candidates", {}).get(split, {}).get("records", 0) for split in ("val", "test")}
    expected_rows = {split: c["candidates"]["queries"].get(split, 0) + c["candidates"]["negatives"].get(split, 0)
                     for split in ("val", "test")}
    labs = c["labs_rows"]
    checks = [
        ("admissions == sum(dropped) + rejected + matched", c["admissions"],
         sum(c["dropped"].values()) + c["rejected"] + c["matched"]),
        ("matched == sum(per_split)", c["matched"], sum(c["per_split"].values())),
        ("tfrecord records == per_split", written, c["per_split"]),
        ("manifest rows == matched", outputs.get("manifest", {}).get("manifest", {}).get("records", 0), c["matched"]),
        ("candidate queries == val + test written", sum(c["candidates"]["queries"].values()),
         c["per_split"]["val"] + c["per_split"]["test"]),
        ("candidate rows == queries + negatives", candidate_rows, expected_rows),
        ("reject lines == rejects_total", outputs.get("rejects", {}).get("rejects", {}).get("records", 0),
         c["rejects_total"]),
        ("labevents rows == other itemid + rejected + without valuenum + subject without image + kept",
         labs["read"], labs["other_itemid"] + labs["rejected"] + labs["without_valuenum"]
         + labs["subject_without_image"] + labs["kept"]),
    ]
    return [f"{name}: {left} != {right}" for name, left, right in checks if left != right]


def document(config: Config, features: dict, windows: dict, events: dict[str, int], input_files: list[dict],
             files: list[dict], ecdf) -> dict:
    counts = summarize_counts(events)
    outputs = summarize_outputs(files, config.output)
    problems = check_counts(counts, outputs)
    if problems:
        raise CountsError("counts do not add up: " + "; ".join(problems))
    return {
        "dataset": "Symile-MIMIC: hospital admissions with a chest X-ray, a 12-lead ECG and 50 labs",
        "config": config.as_dict(),
        "versions": versions(),
        "inputs": {i["table"]: {k: i[k] for k in ("path", "bytes", "sha256", "rows")}
                   for i in sorted(input_files, key=lambda i: i["table"])},
        "windows": {name: window.as_dict() for name, window in windows.items()},
        "label_order": list(mimic.LABELS),
        "symile_label_order": list(mimic.SYMILE_LABELS),
        "lab_itemids": list(mimic.SYMILE_LAB_ITEMIDS),
        "ecg_leads": list(mimic.ECG_LEADS),
        "features": feature_spec_json(features),
        "image": image_section(config),
        "counts": counts,
        "funnel": dict(funnel_steps(counts)),
        "split": split_section(config, events, counts),
        "ecdf": ecdf.summary(),
        "candidates": {"splits": ["val", "test"], "seed": config.candidate_seed,
                       "negatives": config.candidate_negatives,
                       "rule": "per query: itself (label 1), then negatives drawn without replacement from the other "
                               "written admissions of its split by random.Random(sha256(f'{seed}:{hadm_id}'))"},
        "outputs": outputs,
    }


def empty_message(document: dict) -> str:
    steps = funnel_steps(document["counts"])
    emptied = next((name for name, left in steps if left == 0), "written")
    reasons = ", ".join(f"{r} {n}" for r, n in document["counts"]["dropped"].items() if n)
    return (f"{document['config']['output']} wrote no records, so it was not published: no admission was left at "
            f"'{emptied}' ({reasons or 'no admissions read'})")


def funnel(counts: dict, config: dict) -> str:
    rows = [(name, n, "") for name, n in funnel_steps(counts)[:-1]]
    rows += [("rejected", counts["rejected"], ", ".join(f"{k} {v}" for k, v in counts["rejected_by_reason"].items())),
             ("written", counts["matched"], " / ".join(f"{s} {counts['per_split'][s]}" for s in mimic.SPLITS)),
             ("rejects written (all stages)", counts["rejects_total"], "")]
    return "\n".join(f"{name:<36}{n:>9}  {extra}".rstrip() for name, n, extra in rows)
