"""medfuse_*'s metadata.json, the per-stay funnel that must add up, and the CLI's funnel table.

The funnel is per ICU stay: stays = each drop reason (medfuse_stays.STAY_DROPS, then los_under_48h for IHM and
no_events) + rejected + written.
"""

from __future__ import annotations

from beam_pipeline import mimic
from beam_pipeline.cohorts import medfuse_stays as stays_lib
from beam_pipeline.cohorts.medfuse_events import NEVER_IN_MIMIC_IV
from beam_pipeline.fileio.metadata import CountsError, image_section, prefixed, summarize_outputs, versions
from beam_pipeline.options import Config
from beam_pipeline.transforms import hourly
from beam_pipeline.transforms.examples import feature_spec_json

DROPS = (*stays_lib.STAY_DROPS, "los_under_48h", "no_events")
ADMISSION_STAGES = ("join/", "images/")  # rejects of whole stays (the others are of rows: read/, metadata/)
SPLIT_RULE = ("MedFuse's subject lists: testset_iv flag 1 -> test; else listed in valset_iv -> val (flag 1) or "
              "train; else listed in testset_iv -> train; subjects in neither -> sha256('<split_salt>:<subject_id>')"
              f" against {list(stays_lib.HASH_FALLBACK_FRACTIONS)} (hash_fallback)")


def summarize_counts(events: dict[str, int], label_names) -> dict:
    rejects = prefixed(events, "rejects/")
    stay_rejects = {k: v for k, v in rejects.items() if k.startswith(ADMISSION_STAGES)}
    written = events.get("matched", 0)
    return {
        "stays": events.get("stays", 0),
        "dropped": {reason: events.get(f"dropped/{reason}", 0) for reason in DROPS},
        "rejected": sum(stay_rejects.values()),
        "rejected_by_reason": stay_rejects,
        "matched": written,
        "paired": events.get("paired", 0),
        "per_split": {s: events.get(f"per_split/{s}", 0) for s in mimic.SPLITS},
        "patients_per_split": {s: events.get(f"patients/{s}", 0) for s in mimic.SPLITS},
        "split_sources": prefixed(events, "split_source/"),
        "label_prevalence": {name: events.get(f"labels_positive/{name}", 0) for name in label_names},
        "channel_coverage": {channel: {"stays": events.get(f"channel_stays/{channel}", 0),
                                       "bins": events.get(f"channel_bins/{channel}", 0)} for channel in hourly.CHANNELS},
        "events": prefixed(events, "events/"),
        "images_kept_view": events.get("images_kept_view", 0),
        "images_other_view": events.get("images_other_view", 0),
        "rows_read": prefixed(events, "rows_read/"),
        "rows_rejected": prefixed(events, "rows_rejected/"),
        "rows_filtered": prefixed(events, "rows_filtered/"),
        "lines_read": prefixed(events, "lines_read/"),
        "duplicates": {"identical_rows": prefixed(events, "duplicates/identical_rows/"),
                       "conflicting_keys": prefixed(events, "duplicates/conflicting_keys/")},
        "rejects_total": sum(rejects.values()),
        "rejects_by_stage_reason": rejects,
    }


def funnel_steps(c: dict) -> list[tuple[str, int]]:
    left, steps = c["stays"], [("ICU stays", c["stays"])]
    for label, reasons in (("one care unit, one per admission, adult", stays_lib.STAY_DROPS),
                           ("long enough for the task", ("los_under_48h",)), ("with events", ("no_events",))):
        left -= sum(c["dropped"][r] for r in reasons)
        steps.append((label, left))
    steps.append(("written", c["matched"]))
    return steps


def check_counts(c: dict, outputs: dict) -> list[str]:
    written = {split: outputs.get("tfrecords", {}).get(split, {}).get("records", 0) for split in mimic.SPLITS}
    listed = {split: outputs.get("listfiles", {}).get(split, {}).get("records", 0) for split in mimic.SPLITS}
    checks = [
        ("stays == sum(dropped) + rejected + matched", c["stays"],
         sum(c["dropped"].values()) + c["rejected"] + c["matched"]),
        ("matched == sum(per_split)", c["matched"], sum(c["per_split"].values())),
        ("tfrecord records == per_split", written, c["per_split"]),
        ("listfile rows == per_split", listed, c["per_split"]),
        ("manifest rows == matched", outputs.get("manifest", {}).get("manifest", {}).get("records", 0), c["matched"]),
        ("reject lines == rejects_total", outputs.get("rejects", {}).get("rejects", {}).get("records", 0),
         c["rejects_total"]),
    ]
    return [f"{name}: {left} != {right}" for name, left, right in checks if left != right]


def document(task: str, config: Config, features: dict, events: dict[str, int], input_files: list[dict],
             files: list[dict], normalizer) -> dict:
    label_names = ("in_hospital_mortality",) if task == "ihm" else stays_lib.PHENOTYPES
    counts = summarize_counts(events, label_names)
    outputs = summarize_outputs(files, config.output)
    problems = check_counts(counts, outputs)
    if problems:
        raise CountsError("counts do not add up: " + "; ".join(problems))
    coverage = counts["channel_coverage"]
    return {
        "dataset": {"ihm": "MedFuse in-hospital mortality (48 h of ICU time series + AP CXR when paired)",
                    "phenotyping": "MedFuse phenotyping (ICU time series + AP CXR when paired)"}[task],
        "config": config.as_dict(),
        "versions": versions(),
        "inputs": {i["table"]: {k: i[k] for k in ("path", "bytes", "sha256", "rows")}
                   for i in sorted(input_files, key=lambda i: i["table"])},
        "task": task,
        "window": {"cxr": stays_lib.IHM_WINDOW.as_dict() if task == "ihm" else {
            **stays_lib.IHM_WINDOW.as_dict(), "upper_hours": "the stay's LOS (outtime)",
            "rule": "0 h ≤ Δ ≤ LOS from intime (latest; ties: smallest dicom_id)"}},
        "label_names": list(label_names),
        "channel_order": list(hourly.CHANNELS),
        "feature_names": hourly.feature_names(),
        "features": feature_spec_json(features),
        "image": image_section(config),
        "counts": counts,
        "funnel": dict(funnel_steps(counts)),
        "never_observed_channels": sorted(ch for ch, n in coverage.items() if not n["stays"]),
        "never_in_mimic_iv": list(NEVER_IN_MIMIC_IV),
        "split": {"rule": SPLIT_RULE, "salt": config.split_salt, "sources": counts["split_sources"],
                  "patients_per_split": counts["patients_per_split"]},
        "normalizer": None if normalizer is None else {**normalizer.as_dict(), "fitted_on": "train split, every hour "
                                                                                            "of every written stay"},
        "outputs": outputs,
    }


def empty_message(document: dict) -> str:
    steps = funnel_steps(document["counts"])
    emptied = next((name for name, left in steps if left == 0), "written")
    reasons = ", ".join(f"{r} {n}" for r, n in document["counts"]["dropped"].items() if n)
    return (f"{document['config']['output']} wrote no records, so it was not published: no ICU stay was left at "
            f"'{emptied}' ({reasons or 'no ICU stays read'})")


def funnel(counts: dict, config: dict) -> str:
    rows = [(name, n, "") for name, n in funnel_steps(counts)[:-1]]
    rows += [("rejected", counts["rejected"], ", ".join(f"{k} {v}" for k, v in counts["rejected_by_reason"].items())),
             ("written", counts["matched"], " / ".join(f"{s} {counts['per_split'][s]}" for s in mimic.SPLITS)),
             ("  of which with a paired CXR", counts["paired"], ""),
             ("rejects written (all stages)", counts["rejects_total"], "")]
    return "\n".join(f"{name:<40}{n:>9}  {extra}".rstrip() for name, n, extra in rows)
