"""What both readers need: the run's metadata.json and the shard files of a split, in order."""

from __future__ import annotations

from apache_beam.io.filesystems import FileSystems

from beam_pipeline import mimic
from beam_pipeline.io.metadata import read_json


def load_metadata(output: str) -> dict:
    """metadata.json of a finished run (it is written last, so its presence means the run completed)."""
    return read_json(FileSystems.join(output, "metadata.json"))


def shard_files(output: str, split: str, metadata: dict) -> list[str]:
    """All shards of a split, sorted; fails if the count does not match what the run wrote."""
    if split not in mimic.SPLITS:
        raise ValueError(f"split must be one of {', '.join(mimic.SPLITS)}, not {split!r}")
    suffix = ".tfrecord.gz" if metadata["config"]["compression"] == "gzip" else ".tfrecord"
    pattern = FileSystems.join(output, "tfrecords", f"{split}-*-of-*{suffix}")
    files = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    expected = metadata["outputs"]["tfrecords"][split]["shards"]
    if len(files) != expected:
        raise FileNotFoundError(f"{pattern}: found {len(files)} shards, metadata.json lists {expected}")
    return files
