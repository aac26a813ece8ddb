"""metadata.json: config, versions, feature spec, label order, input checksums, outputs and the counts that add up.

Written by the pipeline itself after every shard, so it exists only for a complete run and works the same on
Dataflow; the same step then publishes the run (LATEST) and removes earlier ones (beam_pipeline.fileio.outputs).
Counts come from the events every stage emits; if they do not add up the job fails rather than publish a dataset that
lost records silently.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
from typing import Callable

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import __version__, accounting, failpoints, mimic
from beam_pipeline.fileio import tfds_metadata
from beam_pipeline.fileio.outputs import (MANIFEST_COLUMNS, check_intact, previous_runs, publish, remove_run,
                                          stale_latest_copies, write_atomically)
from beam_pipeline.options import Config
from beam_pipeline.readers.normalization import NORMALIZATION
from beam_pipeline.transforms import pixels
from beam_pipeline.transforms.examples import feature_spec, feature_spec_json
from beam_pipeline.transforms.labels import STATUSES
from beam_pipeline.transforms.snapshot import FEATURE_NAMES
from beam_pipeline.transforms.stats import summarize_stats

PACKAGES = ("apache-beam", "protobuf", "google-crc32c", "numpy", "opencv-python-headless")
DESCRIPTION = "MIMIC-CXR-JPG x MIMIC-IV-ED, leakage-safe multimodal records"


class CountsError(RuntimeError):
    pass


class EmptyRunError(RuntimeError):
    """The job wrote no records: its run folder is complete (metadata.json) but not published."""


def prefixed(events: dict[str, int], prefix: str) -> dict[str, int]:
    return {k[len(prefix):]: v for k, v in events.items() if k.startswith(prefix)}


def read_counts(events: dict[str, int]) -> dict:
    """What reading the tables reports per table, in every cohort's counts block (README "Bad input")."""
    return {name: prefixed(events, f"{name}/")
            for name in ("rows_read", "rows_rejected", "lines_read", "nul_bytes_removed", "undecodable_bytes")}


def summarize_counts(events: dict[str, int]) -> dict:
    """Turn summed events into the documented counts block."""
    rejects = prefixed(events, "rejects/")
    return {
        "images_total": events.get("rows_read/cxr_metadata", 0),
        "images_unreadable": events.get("rows_rejected/cxr_metadata", 0),
        "images_other_view": events.get("images_other_view", 0),
        "images_kept_view": events.get("images_kept_view", 0),
        "matched": events.get("matched", 0),
        "no_ed_stay": events.get("no_ed_stay", 0),
        "dropped_after_ed_departure": events.get("dropped_after_ed_departure", 0),
        "rejected": events.get("rejected", 0),
        "rejected_by_reason": {k: v for k, v in rejects.items() if not k.startswith("read/")},
        "per_split": {s: events.get(f"per_split/{s}", 0) for s in mimic.SPLITS},
        "patients_per_split": {s: events.get(f"patients/{s}", 0) for s in mimic.SPLITS},
        "studies_per_split": {s: events.get(f"studies/{s}", 0) for s in mimic.SPLITS},
        "labels": {status: events.get(f"labels/{status}", 0) for status in STATUSES},
        "after_ed_departure": events.get("written/after_ed_departure", 0),
        "written_notes": {"redacted": events.get("written/notes_redacted", 0),
                          "truncated": events.get("written/notes_truncated", 0)},
        "vitals_implausible_dropped": events.get("vitals_implausible_dropped", 0),
        "images_decoded_at": prefixed(events, "images_decoded_at_"),  # {"1/4": n}: the JPEG decode's scaling
        "images_size_differs_from_metadata": events.get("images_size_differs_from_metadata", 0),
        "notes": {"tokenized": events.get("notes_tokenized", 0), "truncated": events.get("notes_truncated", 0),
                  "enhanced_truncated": events.get("enhanced_notes_truncated", 0),
                  "redacted": events.get("leakage_notes_redacted", 0)},
        "leakage_hits": prefixed(events, "leakage/"),
        **read_counts(events),
        "duplicates": {"identical_rows": prefixed(events, "duplicates/identical_rows/"),
                       "conflicting_keys": prefixed(events, "duplicates/conflicting_keys/")},
        "rejects_total": sum(rejects.values()),
        "rejects_by_stage_reason": rejects,
    }


def summarize_outputs(files: list[dict], output: str) -> dict:
    """Per output kind and group: shard count, records and bytes; plus every file relative to --output. Kinds and
    groups come in path order, not in the order the writers finished, so metadata.json's bytes do not depend on it."""
    summary: dict = {}
    for f in sorted(files, key=lambda f: f["path"]):
        kind = f["path"][len(output):].strip("/").split("/")[0]
        entry = summary.setdefault(kind, {}).setdefault(f["group"], {"shards": 0, "records": 0, "bytes": 0})
        entry["shards"] += 1
        entry["records"] += f["records"]
        entry["bytes"] += f["bytes"]
    summary["files"] = sorted(f["path"][len(output):].strip("/") for f in files)
    return summary


def check_counts(counts: dict, outputs: dict, within_ed_stay: bool = False) -> list[str]:
    """Every identity the funnel promises; an empty list means nothing was lost."""
    c = counts
    written = {split: outputs.get("tfrecords", {}).get(split, {}).get("records", 0) for split in mimic.SPLITS}
    checks = [
        ("images_total == images_unreadable + images_other_view + images_kept_view",
         c["images_total"], c["images_unreadable"] + c["images_other_view"] + c["images_kept_view"]),
        ("images_kept_view == matched + no_ed_stay + dropped_after_ed_departure + rejected",
         c["images_kept_view"], c["matched"] + c["no_ed_stay"] + c["dropped_after_ed_departure"] + c["rejected"]),
        ("rejected == sum(rejected_by_reason)", c["rejected"], sum(c["rejected_by_reason"].values())),
        ("matched == sum(per_split)", c["matched"], sum(c["per_split"].values())),
        ("matched == sum(labels)", c["matched"], sum(c["labels"].values())),
        ("tfrecord records == per_split", written, c["per_split"]),
        ("manifest rows == matched", outputs.get("manifest", {}).get("manifest", {}).get("records", 0), c["matched"]),
        ("reject lines == rejects_total", outputs.get("rejects", {}).get("rejects", {}).get("records", 0),
         c["rejects_total"]),
    ]
    problems = [f"{name}: {left} != {right}" for name, left, right in checks if left != right]
    parts = {"after_ed_departure": c["after_ed_departure"],
             **{f"written_notes.{k}": v for k, v in c["written_notes"].items()}}  # subsets of the written records
    problems += [f"{name} <= matched: {n} > {c['matched']}" for name, n in parts.items() if n > c["matched"]]
    if within_ed_stay and c["after_ed_departure"]:
        problems.append(f"--within_ed_stay but after_ed_departure == {c['after_ed_departure']}")
    if not within_ed_stay and c["dropped_after_ed_departure"]:
        problems.append(f"dropped_after_ed_departure == {c['dropped_after_ed_departure']} without --within_ed_stay")
    return problems


# The stages where kept images leave the funnel (the "stage" of their rejects), in pipeline order; the window is
# applied in the join. A stage not listed here counts as the last.
IMAGE_STAGES = ("metadata", "join", "record", "split", "images")


def _top_reasons(rejects: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(rejects.items(), key=lambda item: (-item[1], item[0]))[:3])


def empty_run_message(counts: dict, config: dict) -> str:
    """Why a run wrote no records: the first stage of the funnel that left no image, with the flags that decide it."""
    if not counts["images_total"] or counts["images_total"] == counts["images_unreadable"]:
        reason = "the metadata table has no readable data rows"
    elif not counts["images_kept_view"]:
        reason = (f"no image has a kept view (--views={','.join(config['views'])}; values match ViewPosition exactly; "
                  "MIMIC's are capitals such as AP,PA)")
    else:
        by_stage: dict[str, dict[str, int]] = {"join": {}}
        for key, n in counts["rejected_by_reason"].items():
            by_stage.setdefault(key.split("/")[0], {})[key] = n
        unlinked = counts["no_ed_stay"] + counts["dropped_after_ed_departure"]
        remaining, passed = counts["images_kept_view"], {}
        for stage in sorted(by_stage, key=lambda s: (IMAGE_STAGES + (s,)).index(s)):
            left = remaining - sum(by_stage[stage].values()) - (unlinked if stage == "join" else 0)
            if left <= 0:
                break
            remaining = left
            passed.update(by_stage[stage])  # rejects of the stages before the one that emptied the run
        if stage == "join" and unlinked:
            rejected = {**passed, **by_stage["join"]}
            reason = (f"no kept image matched an ED stay in the window (--window_start_hours="
                      f"{config['window_start_hours']}, --window_end_hours={config['window_end_hours']}): "
                      f"{counts['no_ed_stay']} without a stay"
                      + (f", {counts['dropped_after_ed_departure']} taken after ED departure (--within_ed_stay)"
                         if counts["dropped_after_ed_departure"] else "")
                      + (f", {sum(rejected.values())} rejected ({_top_reasons(rejected)})" if rejected else ""))
        else:
            reason = (f"the remaining {remaining} images were all rejected at the {stage} stage: "
                      f"{_top_reasons(by_stage[stage])}")
    return f"{config['output']} wrote no records, so it was not published: {reason}"


def versions() -> dict[str, str]:
    found = {"beam_pipeline": __version__, "python": platform.python_version()}
    for package in PACKAGES:
        found[package] = importlib.metadata.version(package)
    return found


def spec(config: Config, text: dict) -> dict:
    """The run's feature spec as written to metadata.json."""
    top_k = text["retrieval"]["top_k"] if text["retrieval"] else 0
    return feature_spec_json(feature_spec(config.images, config.edge_map, top_k))


def build_metadata(config: Config, text: dict, events: dict[str, int], inputs: list[dict], files: list[dict],
                   extra_files: list[str] = (), leakage_probe: dict | None = None) -> dict:
    counts = summarize_counts(events)
    outputs = summarize_outputs(files, config.output)
    outputs["files"] = sorted(outputs["files"] + list(extra_files))
    problems = check_counts(counts, outputs, config.within_ed_stay)
    if problems:
        raise CountsError("counts do not add up: " + "; ".join(problems))
    return {
        "dataset": DESCRIPTION,
        "config": config.as_dict(),
        "versions": versions(),
        "inputs": {i["table"]: {k: i[k] for k in ("path", "bytes", "sha256", "rows")}
                   for i in sorted(inputs, key=lambda i: i["table"])},
        "label_order": list(mimic.LABELS),
        "feature_names": list(FEATURE_NAMES),
        "features": spec(config, text),
        "text": text,
        "image": image_section(config),
        "normalization": {name: {"mean": list(mean), "std": list(std)} for name, (mean, std) in NORMALIZATION.items()},
        "manifest_columns": list(MANIFEST_COLUMNS),
        "reject_fields": list(accounting.REJECT_FIELDS),
        "counts": counts,
        "split": split_section(config, events, counts),
        "stats": summarize_stats(events),
        "leakage_probe": leakage_probe,
        "outputs": outputs,
    }


def split_section(config: Config, events: dict[str, int], counts: dict) -> dict:
    """How the split was made, and what its rules did (beam_pipeline.transforms.split)."""
    official = config.split_strategy == "official"
    return {"strategy": config.split_strategy,
            "rule": "MIMIC-CXR split file per image (validate -> val)" if official else
                    f"sha256('{config.split_salt}:<subject_id>') against fractions {list(config.split_fractions)}",
            "missing_from_official_file": "rejected (not_in_official_split)" if official else None,
            "patient_in_several_official_splits": "all of the patient's images go to the most held-out split among "
                                                  "every row of the patient in the split file (test, then val), "
                                                  "whatever images this run kept" if official else None,
            # subjects whose rows in the split file name several splits: a count of the file, not of this run
            "split_file_patients_in_several_splits": events.get("split_file_patients_in_several_splits", 0)
            if official else None,
            "reassigned_patients": events.get("split_reassigned_patients", 0),
            "reassigned_records": events.get("split_reassigned_records", 0),
            "patients_per_split": counts["patients_per_split"]}


def image_section(config: Config) -> dict | None:
    """How the stored images were made, and how to map their pixels back to the source JPEG."""
    if not config.images:
        return None
    return {"size": config.image_size, "resize_mode": config.resize_mode, "format": config.image_format,
            "jpeg_quality": config.jpeg_quality if config.image_format == "jpeg" else None,
            "edge_map": config.edge_map, "channels": 1, "dtype": "uint8", "pad_value": pixels.PAD_VALUE,
            "to_original": "x_orig = (x - image/offset_x) / image/scale_x; y_orig = (y - image/offset_y) / "
                           "image/scale_y; continuous coordinates, origin at the top-left corner (pixel i's centre "
                           "is i + 0.5)",
            "normalized": False}


def write_tfds_files(config: Config, text: dict, written: list[dict]) -> list[str]:
    """features.json and dataset_info.json beside the shards; returns their paths relative to --output."""
    folder = FileSystems.join(config.output, "tfrecords")
    write_json(FileSystems.join(folder, "features.json"),
               tfds_metadata.features_json(spec(config, text), config.image_size, config.image_format))
    write_json(FileSystems.join(folder, "dataset_info.json"),
               tfds_metadata.dataset_info_json([f for f in written if f["path"].startswith(folder)], DESCRIPTION))
    return ["tfrecords/dataset_info.json", "tfrecords/features.json"]


def write_json(path: str, document: dict) -> None:
    write_atomically(path, (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def read_json(path: str) -> dict:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return json.loads(f.read().decode("utf-8"))


def ed_document(config: Config, text: dict, events: dict[str, int], input_files: list[dict], written: list[dict],
                probe: dict | None = None) -> dict:
    """The ed_cxr cohort's metadata.json (plus its TFDS files beside uncompressed shards)."""
    tfds_files = write_tfds_files(config, text, written) if config.compression == "none" else []
    return build_metadata(config, text, events, input_files, written, tfds_files, probe)


def ed_empty_message(document: dict) -> str:
    return empty_run_message(document["counts"], document["config"])


class WriteMetadata(beam.PTransform):
    """(events, input file records, written file records, *extra singletons) -> metadata.json in the run folder
    (config.output) after every shard is written and found still there; then the run is published as
    ``base``/LATEST and the runs under ``base`` it replaces are removed (see ``previous_runs``). Outputs the counts.

    ``document(events, input_files, written, *extras) -> dict`` is the cohort's metadata.json; its
    ``counts.matched`` is the number of records written. A run that wrote none is never published, so it cannot
    replace a published dataset; with ``fail_when_empty`` (remote runners, where nobody reads the counts at the
    end) the job then fails with ``empty_message(document)``."""

    def __init__(self, config: Config, base: str, document: Callable[..., dict], empty_message: Callable[[dict], str],
                 fail_when_empty: bool = False):
        super().__init__()
        self._config = config
        self._base = base
        self._document = document
        self._empty_message = empty_message
        self._fail_when_empty = fail_when_empty

    def expand(self, inputs):
        events, input_files, written, *extras = inputs
        config, base, make_document, empty_message, fail_when_empty = (
            self._config, self._base, self._document, self._empty_message, self._fail_when_empty)

        def write(_, events, input_files, written, *extras):
            document = make_document(accounting.sum_events(events), input_files, written, *extras)
            failpoints.reached("before_metadata")
            check_intact(config.output, written)
            write_json(FileSystems.join(config.output, "metadata.json"), document)
            failpoints.reached("metadata_written")
            if document["counts"]["matched"]:
                publish(base, config.output)
                failpoints.reached("published")
                for folder, files, above in previous_runs(base, config.output, keep_complete=config.keep_runs):
                    remove_run(folder, files, above)
                stale = stale_latest_copies(base, config.output)
                if stale:
                    FileSystems.delete(stale)
            elif fail_when_empty:
                raise EmptyRunError(empty_message(document))
            yield document["counts"]

        totals = events | "SumEvents" >> beam.CombinePerKey(sum)
        return (events.pipeline
                | "Once" >> beam.Create([None])
                | "WriteMetadataJson" >> beam.FlatMap(write, beam.pvalue.AsList(totals),
                                                      beam.pvalue.AsList(input_files), beam.pvalue.AsList(written),
                                                      *[beam.pvalue.AsSingleton(e) for e in extras]))
