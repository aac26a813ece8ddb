"""What both readers need: the run's metadata.json and the shard files of a split, in order."""

from __future__ import annotations

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import mimic
from beam_pipeline.fileio.metadata import read_json


def resolve_output(output: str) -> str:
    """A run folder: ``output`` itself, or the run its LATEST pointer names (runs made with --dated_output)."""
    if not FileSystems.exists(FileSystems.join(output, "metadata.json")) and \
            FileSystems.exists(FileSystems.join(output, "LATEST")):
        with FileSystems.open(FileSystems.join(output, "LATEST"), compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return f.read().decode("utf-8").strip()
    return output


def open_run(output: str) -> tuple[str, dict]:
    """(run folder, its metadata.json) of a finished run: metadata.json is written last, so its presence means the
    run completed. Follows LATEST; works wherever the folder was copied to."""
    folder = resolve_output(output)
    return folder, read_json(FileSystems.join(folder, "metadata.json"))


def load_metadata(output: str) -> dict:
    return open_run(output)[1]


def shard_files(folder: str, split: str, metadata: dict) -> list[str]:
    """All shards of a split in a run folder, sorted; fails if the count does not match what the run wrote."""
    if split not in mimic.SPLITS:
        raise ValueError(f"split must be one of {', '.join(mimic.SPLITS)}, not {split!r}")
    suffix = ".tfrecord.gz" if metadata["config"]["compression"] == "gzip" else ".tfrecord"
    pattern = FileSystems.join(folder, "tfrecords", f"{split}-*-of-*{suffix}")
    files = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    expected = metadata["outputs"]["tfrecords"][split]["shards"]
    if len(files) != expected:
        raise FileNotFoundError(f"{pattern}: found {len(files)} shards, metadata.json lists {expected}")
    return files
