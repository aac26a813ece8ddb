"""What both readers need: the run's metadata.json and the shard files of a split, in order."""

from __future__ import annotations

from apache_beam.io.filesystems import FileSystems

from beam_pipeline import mimic
from beam_pipeline.fileio.metadata import read_json
from beam_pipeline.fileio.outputs import LATEST, latest_run, was_published


INCOMPLETE = "the run is incomplete or still running (its job failed, was stopped or has not finished)"


def resolve_output(output: str) -> str:
    """The run folder to read: the run ``output``/LATEST names (the published one), or ``output`` itself when it
    is a run folder. Only a folder with metadata.json holds a complete run: it is written after every shard. A run
    folder whose run wrote records but was never published is refused (an empty run's is read for its counts)."""
    folder = latest_run(output)
    if folder:
        if not FileSystems.exists(FileSystems.join(folder, "metadata.json")):
            raise FileNotFoundError(f"{folder}, which {FileSystems.join(output, LATEST)} names, has no metadata.json: "
                                    f"{INCOMPLETE}, or the output folder was copied or deleted in part")
        return folder
    metadata = FileSystems.join(output, "metadata.json")
    if FileSystems.exists(metadata):
        if read_json(metadata)["counts"]["matched"] and not was_published(output):
            raise FileNotFoundError(f"{output} holds a run that was never published: its job failed or was killed "
                                    "after writing metadata.json (or is publishing it now), and the next run "
                                    "published beside it deletes it; read the output folder (it follows LATEST)")
        return output
    raise FileNotFoundError(f"{output} holds no complete run (no LATEST, no metadata.json): {INCOMPLETE}")


def open_run(output: str) -> tuple[str, dict]:
    """(run folder, its metadata.json) of the published run: LATEST is written only after the run's metadata.json,
    which is written only after every shard. Works wherever the output folder was copied to (LATEST is relative)."""
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


class UnsupportedCohort(ValueError):
    """The output is of a cohort the reader does not read (its records lack the features the reader needs)."""


def cohort_of(metadata: dict) -> str:
    return metadata["config"].get("cohort", "ed_cxr")  # runs from before --cohort existed are all ed_cxr


def require_cohort(metadata: dict, output: str, reader: str, supported: tuple[str, ...] = ("ed_cxr",)) -> None:
    """Stop before reading a record, naming the output's cohort, rather than fail on the first feature it lacks."""
    cohort = cohort_of(metadata)
    if cohort not in supported:
        raise UnsupportedCohort(
            f"{reader} reads {', '.join(supported)} outputs only, and {output} is a {cohort} output: read it with "
            "beam_pipeline.readers.tf_data.dataset(OUTPUT, split) (a dict of every feature per record) or parse "
            "its TFRecords with beam_pipeline.readers.tf_data.parse_spec(metadata)")
