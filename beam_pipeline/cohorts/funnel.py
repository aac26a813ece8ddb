"""The per-unit funnel the record-per-unit cohorts share (an admission, an ICU stay): counts from the summed events,
the identities that must hold, the CLI table and the message of an empty run.

A unit is counted once as ``<unit>`` when the cohort sees it, then exactly once more as ``dropped/<reason>``, as a
reject of a whole-unit stage, or as ``matched`` (written): so units = sum(dropped) + rejected + matched.
"""

from __future__ import annotations

from typing import Sequence

from beam_pipeline import mimic
from beam_pipeline.fileio.metadata import CountsError, image_section, prefixed, read_counts, versions
from beam_pipeline.options import Config
from beam_pipeline.transforms.examples import feature_spec_json


def unit_counts(events: dict[str, int], unit: str, drops: Sequence[str], unit_stages: tuple[str, ...]) -> dict:
    """The counts block: units, drops in their order, whole-unit rejects (stages ``unit_stages``), written per
    split, and what every read reports (rows, lines, duplicates, all rejects)."""
    rejects = prefixed(events, "rejects/")
    unit_rejects = {k: v for k, v in rejects.items() if k.startswith(unit_stages)}
    return {
        unit: events.get(unit, 0),
        "dropped": {reason: events.get(f"dropped/{reason}", 0) for reason in drops},
        "rejected": sum(unit_rejects.values()),
        "rejected_by_reason": unit_rejects,
        "matched": events.get("matched", 0),
        "per_split": {s: events.get(f"per_split/{s}", 0) for s in mimic.SPLITS},
        "patients_per_split": {s: events.get(f"patients/{s}", 0) for s in mimic.SPLITS},
        "images_kept_view": events.get("images_kept_view", 0),
        "images_other_view": events.get("images_other_view", 0),
        **read_counts(events),
        "rows_filtered": prefixed(events, "rows_filtered/"),
        "duplicates": {"identical_rows": prefixed(events, "duplicates/identical_rows/"),
                       "conflicting_keys": prefixed(events, "duplicates/conflicting_keys/")},
        "rejects_total": sum(rejects.values()),
        "rejects_by_stage_reason": rejects,
    }


def steps(counts: dict, unit: str, first: str, groups: Sequence[tuple[str, Sequence[str]]]) -> list[tuple[str, int]]:
    """(step, units left): ``first`` with every unit, then each (label, drop reasons) group, then written."""
    left, result = counts[unit], [(first, counts[unit])]
    for label, reasons in groups:
        left -= sum(counts["dropped"][r] for r in reasons)
        result.append((label, left))
    return result + [("written", counts["matched"])]


def identity_problems(counts: dict, outputs: dict, unit: str, extra: Sequence[tuple[str, object, object]] = ()
                      ) -> list[str]:
    """Every identity of the funnel and of the files written, plus the cohort's own ``extra`` (name, left, right)."""
    c = counts
    written = {split: outputs.get("tfrecords", {}).get(split, {}).get("records", 0) for split in mimic.SPLITS}
    checks = [
        (f"{unit} == sum(dropped) + rejected + matched", c[unit],
         sum(c["dropped"].values()) + c["rejected"] + c["matched"]),
        ("matched == sum(per_split)", c["matched"], sum(c["per_split"].values())),
        ("tfrecord records == per_split", written, c["per_split"]),
        ("manifest rows == matched", outputs.get("manifest", {}).get("manifest", {}).get("records", 0), c["matched"]),
        ("reject lines == rejects_total", outputs.get("rejects", {}).get("rejects", {}).get("records", 0),
         c["rejects_total"]),
        *extra,
    ]
    return [f"{name}: {left} != {right}" for name, left, right in checks if left != right]


def provenance(config: Config, input_files: list[dict]) -> dict:
    """The head of every metadata.json: config, versions, input checksums."""
    return {"config": config.as_dict(), "versions": versions(),
            "inputs": {i["table"]: {k: i[k] for k in ("path", "bytes", "sha256", "rows")}
                       for i in sorted(input_files, key=lambda i: i["table"])}}


def document(dataset: str, config: Config, input_files: list[dict], features: dict, counts: dict,
             funnel_steps: list[tuple[str, int]], split: dict, outputs: dict, problems: list[str], **specific) -> dict:
    """metadata.json: what every cohort reports (provenance, feature spec, image, counts, funnel, split, outputs)
    around the cohort's ``specific`` sections. Raises CountsError when an identity does not hold."""
    if problems:
        raise CountsError("counts do not add up: " + "; ".join(problems))
    return {"dataset": dataset, **provenance(config, input_files), **specific,
            "features": feature_spec_json(features), "image": image_section(config), "counts": counts,
            "funnel": dict(funnel_steps), "split": split, "outputs": outputs}


def empty_message(document: dict, funnel_steps: list[tuple[str, int]], units: str) -> str:
    """Why a run wrote nothing: the first step left empty and the drop reasons that emptied it."""
    emptied = next((name for name, left in funnel_steps if left == 0), "written")
    reasons = ", ".join(f"{r} {n}" for r, n in document["counts"]["dropped"].items() if n)
    return (f"{document['config']['output']} wrote no records, so it was not published: no {units[:-1]} was left "
            f"at '{emptied}' ({reasons or f'no {units} read'})")


def table(funnel_steps: list[tuple[str, int]], counts: dict, after_written: Sequence[tuple[str, int, str]] = (),
          width: int = 40) -> str:
    """The CLI's funnel: the steps, the rejects by reason, written per split (then ``after_written`` rows), and
    every reject line written."""
    rows = [(name, n, "") for name, n in funnel_steps[:-1]]
    rows += [("rejected", counts["rejected"], ", ".join(f"{k} {v}" for k, v in counts["rejected_by_reason"].items())),
             ("written", counts["matched"], " / ".join(f"{s} {counts['per_split'][s]}" for s in mimic.SPLITS)),
             *after_written, ("rejects written (all stages)", counts["rejects_total"], "")]
    return "\n".join(f"{name:<{width}}{n:>9}  {extra}".rstrip() for name, n, extra in rows)
