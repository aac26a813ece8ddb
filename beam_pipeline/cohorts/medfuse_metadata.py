"""medfuse_*'s metadata.json, the per-stay funnel that must add up, and the CLI's funnel table.

The funnel is per ICU stay: stays = each drop reason (medfuse_stays.STAY_DROPS, then los_under_48h for IHM and
no_events) + rejected + written.
"""

from __future__ import annotations

from beam_pipeline import mimic
from beam_pipeline.cohorts import medfuse_stays as stays_lib
from beam_pipeline.cohorts.medfuse_events import NEVER_IN_MIMIC_IV
from beam_pipeline.cohorts import funnel as funnel_lib
from beam_pipeline.fileio.metadata import prefixed, summarize_outputs
from beam_pipeline.options import Config
from beam_pipeline.transforms import hourly

DROPS = (*stays_lib.STAY_DROPS, "los_under_48h", "no_events")
STAY_STAGES = ("join/", "images/")  # rejects of whole stays (the others are of rows: read/, metadata/)
FITTED_ON = ("train split, every hour of every train stay built: those then rejected at images/ (X-ray missing or "
             "unreadable) included; train_stays_observed counts these stays per channel")
SPLIT_RULE = ("MedFuse's subject lists: testset_iv flag 1 -> test; else listed in valset_iv -> val (flag 1) or "
              "train; else listed in testset_iv -> train; subjects in neither -> sha256('<split_salt>:<subject_id>')"
              f" against {list(stays_lib.HASH_FALLBACK_FRACTIONS)} (hash_fallback)")


def summarize_counts(events: dict[str, int], label_names) -> dict:
    return {
        **funnel_lib.unit_counts(events, "stays", DROPS, STAY_STAGES),
        "paired": events.get("paired", 0),
        "split_sources": prefixed(events, "split_source/"),
        "label_prevalence": {name: events.get(f"labels_positive/{name}", 0) for name in label_names},
        "channel_coverage": {channel: {"stays": events.get(f"channel_stays/{channel}", 0),
                                       "bins": events.get(f"channel_bins/{channel}", 0),
                                       "train_stays": events.get(f"channel_train_stays/{channel}", 0)}
                             for channel in hourly.CHANNELS},
        "events": prefixed(events, "events/"),  # rows, before the shuffle
        "stay_events": prefixed(events, "stay_events/"),  # per stay: the subject's rows in or out of its series
    }


def funnel_steps(c: dict) -> list[tuple[str, int]]:
    return funnel_lib.steps(c, "stays", "ICU stays", (
        ("one care unit, one per admission, adult", stays_lib.STAY_DROPS),
        ("long enough for the task", ("los_under_48h",)), ("with events", ("no_events",))))


def check_counts(c: dict, outputs: dict) -> list[str]:
    listed = {split: outputs.get("listfiles", {}).get(split, {}).get("records", 0) for split in mimic.SPLITS}
    return funnel_lib.identity_problems(c, outputs, "stays", (("listfile rows == per_split", listed, c["per_split"]),))


def document(task: str, config: Config, features: dict, events: dict[str, int], input_files: list[dict],
             files: list[dict], normalizer) -> dict:
    label_names = ("in_hospital_mortality",) if task == "ihm" else stays_lib.PHENOTYPES
    counts = summarize_counts(events, label_names)
    outputs = summarize_outputs(files, config.output)
    coverage = counts["channel_coverage"]
    return funnel_lib.document(
        {"ihm": "MedFuse in-hospital mortality (48 h of ICU time series + AP CXR when paired)",
         "phenotyping": "MedFuse phenotyping (ICU time series + AP CXR when paired)"}[task], config, input_files,
        features, counts, funnel_steps(counts),
        {"rule": SPLIT_RULE, "salt": config.split_salt, "sources": counts["split_sources"],
         "patients_per_split": counts["patients_per_split"]}, outputs, check_counts(counts, outputs),
        task=task,
        window={"cxr": stays_lib.IHM_WINDOW.as_dict() if task == "ihm" else {
            **stays_lib.IHM_WINDOW.as_dict(), "upper_hours": "the stay's LOS (outtime)",
            "rule": "0 h ≤ Δ ≤ LOS from intime (latest; ties: smallest dicom_id)"}},
        label_names=list(label_names), channel_order=list(hourly.CHANNELS), feature_names=hourly.feature_names(),
        never_observed_channels=sorted(ch for ch, n in coverage.items() if not n["stays"]),
        never_in_mimic_iv=list(NEVER_IN_MIMIC_IV),
        normalizer=None if normalizer is None else {
            **normalizer.as_dict(), "fitted_on": FITTED_ON,
            "train_stays_observed": {channel: events.get(f"normalizer_stays/{channel}", 0)
                                     for channel in hourly.CHANNELS}})


def empty_message(document: dict) -> str:
    return funnel_lib.empty_message(document, funnel_steps(document["counts"]), "ICU stays")


def funnel(counts: dict, config: dict) -> str:
    return funnel_lib.table(funnel_steps(counts), counts, (("  of which with a paired CXR", counts["paired"], ""),))
