"""Dataset statistics for the data card, computed in the pipeline over every written record.

Each record adds 1 to a few named bins (label state per split, sex, age group, view, hours from arrival, note and
token lengths, source image size, retrieved passages and scores). The bins travel as events, are summed with the
counts, and land in metadata.json's ``stats``: exact for any dataset size, so the report never scans the records.
They are not Beam Metrics (hundreds of names would only clutter a job's monitoring page).
"""

from __future__ import annotations

import math

import apache_beam as beam

from beam_pipeline import accounting, mimic
from beam_pipeline.transforms.records import Record
from beam_pipeline.transforms.snapshot import FEATURE_NAMES

PREFIX = "stats/"
AGE_EDGES = (18, 30, 40, 50, 60, 70, 80, 90)
HOUR_EDGES = (0, 1, 2, 4, 8, 12, 24)
TOKEN_EDGES = (32, 64, 96, 128, 192, 256, 384, 512)
CHAR_EDGES = (200, 300, 400, 500, 600, 800, 1000, 1500)
SCORE_EDGES = tuple(round(0.1 * i, 1) for i in range(1, 10))
LABEL_STATES = {1.0: "positive", 0.0: "negative", -1.0: "uncertain"}


def bin_names(edges) -> list[str]:
    """['<e0', 'e0-e1', ..., '>=en'] in order."""
    return [f"<{edges[0]}"] + [f"{a}-{b}" for a, b in zip(edges, edges[1:])] + [f">={edges[-1]}"]


def bin_of(value: float, edges) -> str:
    names = bin_names(edges)
    for edge, name in zip(edges, names):
        if value < edge:
            return name
    return names[-1]


def record_bins(record: Record) -> list[str]:
    """The bins one record falls in (without the 'stats/' prefix)."""
    split = f"split/{record.split}"
    features = dict(zip(FEATURE_NAMES, record.features))
    missing = dict(zip(FEATURE_NAMES, record.features_missing))
    keys = [f"{split}/label/{label}/{'blank' if math.isnan(v) else LABEL_STATES.get(v, 'other')}"
            for label, v in zip(mimic.LABELS, record.labels_raw)]
    keys.append(f"{split}/sex/{'unknown' if missing['female'] else ('female' if features['female'] else 'male')}")
    keys.append(f"{split}/age/{'unknown' if missing['age'] else bin_of(features['age'], AGE_EDGES)}")
    keys.append(f"{split}/view/{record.view_position or 'unknown'}")
    keys.append(f"hours_from_arrival/{bin_of(record.hours_from_arrival, HOUR_EDGES)}")
    keys.append(f"note_chars/{bin_of(len(record.note), CHAR_EDGES)}")
    keys.append(f"note_tokens/{bin_of(len(record.input_ids), TOKEN_EDGES)}")
    if record.image is not None:
        keys.append(f"image_size/{record.image.original_height}x{record.image.original_width}")
    keys += [f"rag/passage/{passage}" for passage in record.rag_ids]
    keys += [f"rag/score/{bin_of(score, SCORE_EDGES)}" for score in record.rag_scores]
    return keys


class DescribeRecords(beam.DoFn):
    """Record -> one event per bin it falls in (nothing else)."""

    def process(self, record: Record):
        for key in record_bins(record):
            yield beam.pvalue.TaggedOutput(accounting.EVENTS, (PREFIX + key, 1))


def summarize_stats(events: dict[str, int]) -> dict:
    """The nested ``stats`` block of metadata.json, bins in their natural order."""
    flat = {k[len(PREFIX):]: v for k, v in events.items() if k.startswith(PREFIX)}

    def under(prefix: str, order: list[str] | None = None) -> dict[str, int]:
        found = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
        if order is None:
            return dict(sorted(found.items(), key=lambda kv: (-kv[1], kv[0])))
        return {name: found.get(name, 0) for name in order}

    per_split = {}
    for split in mimic.SPLITS:
        base = f"split/{split}/"
        per_split[split] = {
            "labels": {label: under(f"{base}label/{label}/", ["positive", "uncertain", "negative", "blank"])
                       for label in mimic.LABELS},
            "sex": under(f"{base}sex/", ["female", "male", "unknown"]),
            "age": under(f"{base}age/", bin_names(AGE_EDGES) + ["unknown"]),
            "view": under(f"{base}view/"),
        }
    return {
        "per_split": per_split,
        "hours_from_arrival": under("hours_from_arrival/", bin_names(HOUR_EDGES)),
        "note_chars": under("note_chars/", bin_names(CHAR_EDGES)),
        "note_tokens": under("note_tokens/", bin_names(TOKEN_EDGES)),
        "image_sizes": under("image_size/"),
        "rag": {"passages": under("rag/passage/"), "scores": under("rag/score/", bin_names(SCORE_EDGES))},
    }
