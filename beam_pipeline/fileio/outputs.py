"""The output layout under --output, how a run is published atomically, and the manifest and rejects formats.

    LATEST                                          "runs/<run id>": the published run (written last, atomically)
    runs/<run id>/manifest/manifest-SSSSS-of-NNNNN.csv       one row per record, header in every shard
    runs/<run id>/tfrecords/{split}-SSSSS-of-NNNNN.tfrecord  one tf.train.Example per manifest row (.gz with gzip)
    runs/<run id>/rejects/rejects-SSSSS-of-NNNNN.jsonl       one JSON object per rejected row or image
    runs/<run id>/audit/leakage-audit-SSSSS-of-NNNNN.jsonl   only with --leakage_audit: unfiltered notes
    runs/<run id>/metadata.json                              config, versions, spec, counts (written after every shard)
    runs/<run id>/PUBLISHED                                  LATEST named this run (written as LATEST moves on)

A run writes only inside its own, new run folder, which nothing points at until the job's last step: metadata.json
(atomically), then PUBLISHED in the run LATEST names, then LATEST (one object write on GCS, a rename locally), then
the runs it replaces are deleted, each run's metadata.json first: with --overwrite every other run, with --keep_runs
those never published. GCS cannot rename a folder atomically, so moving shards into fixed names could always be
interrupted half-way; a pointer cannot. Killed at any point, the output therefore holds the previous published run or
the new one, never a mix, and no metadata.json ever names a missing file. One job per --output at a time: a run
removes unfinished and unpublished runs that started before it, and a run whose files were removed so fails before
metadata.json (``check_intact``).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import json
import os
import tempfile
import uuid
from typing import Any, Callable

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import accounting, failpoints, mimic
from beam_pipeline.fileio import tfrecord
from beam_pipeline.fileio.sharded import ShardFormat, ShardPlan, WriteShards
from beam_pipeline.transforms.images import ImageLoader, ImageSettings, without_pixels
from beam_pipeline.transforms.records import Record

MANIFEST_COLUMNS = ("subject_id", "study_id", "dicom_id", "stay_id", "split", "study_datetime", "ed_intime",
                    "ed_outtime", "hours_from_arrival", "after_ed_departure")
LAYOUT = ("manifest", "tfrecords", "rejects", "audit", "metadata.json")  # inside a run folder
LATEST = "LATEST"
LOCAL_OUTPUT = "--output={} is a local path, which remote workers cannot write; use a gs:// folder"
PUBLISHED = "PUBLISHED"  # inside a run folder that LATEST named before it moved on to another run
RUNS = "runs"
RUN_ID = "%Y%m%dT%H%M%S%fZ"  # a run folder's name: its UTC start time
TEXT_SHARD_BYTES = 256 * 2 ** 20


class OutputError(RuntimeError):
    """--output cannot take this run; found at launch, before any work."""


class OutputExistsError(OutputError):
    pass


class OutputNotWritableError(OutputError):
    pass


class RunChangedError(RuntimeError):
    """Files this run wrote are gone before it was published: another job on the same --output removed them."""


def csv_line(values) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue().encode("utf-8")


def manifest_line(record: Record) -> bytes:
    hours = f"{record.hours_from_arrival:.3f}"
    return csv_line([
        record.subject_id, record.study_id, record.dicom_id, record.stay_id, record.split,
        mimic.format_datetime(record.study_time), mimic.format_datetime(record.ed_intime),
        mimic.format_datetime(record.ed_outtime) if record.ed_outtime else "",
        "0.000" if hours == "-0.000" else hours,
        int(record.after_ed_departure),
    ])


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A cohort's manifest: its header, one CSV line per written record, and the key that orders the rows."""
    columns: tuple[str, ...]
    line: Callable[[Any], bytes]
    key: Callable[[Any], str]


def _ed_manifest_key(record: Record) -> str:
    return f"{record.subject_id:09d}/{record.study_id:09d}/{record.dicom_id}"


ED_MANIFEST = Manifest(MANIFEST_COLUMNS, manifest_line, _ed_manifest_key)


def _json_line(row: dict) -> bytes:
    return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")


def reject_line(row: dict) -> bytes:
    return _json_line({k: row[k] for k in accounting.REJECT_FIELDS})


def _keyed_reject(row: dict) -> tuple[str, str, bytes]:
    line = reject_line(row)
    return "rejects", line.decode("utf-8"), line


def _files(patterns: list[str]) -> list[str]:
    return sorted(m.path for result in FileSystems.match(patterns) for m in result.metadata_list)


def legacy_outputs(output: str) -> list[str]:
    """Files of a run written straight into --output by versions before run folders existed."""
    return _files([FileSystems.join(output, name, "*") for name in LAYOUT[:-1]]
                  + [FileSystems.join(output, LAYOUT[-1])])


def run_folder(output: str, now) -> str:
    """A new run folder under OUTPUT/runs/, named by UTC start time (sortable)."""
    return FileSystems.join(output, RUNS, now.strftime(RUN_ID))


def is_local_path(path: str) -> bool:
    return FileSystems.get_scheme(path) in (None, "file")


def check_output(output: str, replace: bool, local_workers: bool) -> None:
    """At launch: the output can be written (where the workers write: remote workers cannot reach a local path), and
    it holds no published run unless the user asked to replace it (--overwrite or --keep_runs)."""
    if not local_workers and is_local_path(output):
        raise OutputNotWritableError(LOCAL_OUTPUT.format(output))
    check_writable(output)
    latest = FileSystems.join(output, LATEST)
    existing = ([latest] if FileSystems.exists(latest) else []) + legacy_outputs(output)
    if existing and not replace:
        raise OutputExistsError(f"{output} already holds the outputs of a run ({existing[0]}); pass --overwrite to "
                                f"replace it, --keep_runs to add a run beside it, or choose another --output")


def check_writable(output: str) -> None:
    """Create and delete a small file where the run folder will go (OUTPUT/runs/), so an output that cannot be
    written (no permission, a path under a regular file, a missing bucket, an unknown scheme) fails at launch
    rather than after all the work. Local folders the probe had to create are removed again."""
    runs = os.path.abspath(os.path.join(output, RUNS)) if is_local_path(output) else ""
    above = _existing_ancestor(runs) if runs else ""
    try:
        probe = FileSystems.join(output, RUNS, f".write-probe-{uuid.uuid4().hex}")
        with FileSystems.create(probe, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            f.write(b"write probe of a starting run\n")
        _delete_probe(probe)
    except Exception as err:  # whatever the filesystem raises, the run could not write its files there
        reason = _missing_bucket(output) or f"{type(err).__name__}: {err}"
        raise OutputNotWritableError(f"--output={output} cannot be written: {reason}") from None
    finally:
        if runs:
            _remove_empty_folders([runs], above)


def _delete_probe(probe: str, attempts: int = 3) -> None:
    """Delete the probe, retrying: on gs:// Beam deletes through a batch request, whose response can come back
    empty under load (GcsIO.delete_batch then fails on a None response) although the object can be deleted."""
    for attempt in range(attempts):
        try:
            FileSystems.delete([probe])
            return
        except Exception:
            if not FileSystems.exists(probe):  # the delete went through; only its response was lost
                return
            if attempt == attempts - 1:
                raise


def _missing_bucket(path: str) -> str:
    """Says so when the bucket of a gs:// path does not exist: the failed write itself reports a bare 404."""
    if FileSystems.get_scheme(path) != "gs":
        return ""
    from apache_beam.io.gcp.gcsio import GcsIO

    bucket = path[len("gs://"):].split("/")[0]
    try:
        return "" if GcsIO().get_bucket(bucket) else f"bucket gs://{bucket} does not exist"
    except Exception:  # e.g. no permission to look buckets up: the write's own error stands
        return ""


def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.isdir(path):
        path = os.path.dirname(path)
    return path


def _remove_empty_folders(folders, above: str) -> None:
    """Remove each local folder, then its parents, while they are empty, up to (not including) ``above``."""
    for directory in sorted(set(folders), key=len, reverse=True):
        while directory.startswith(above + os.sep):
            try:
                os.rmdir(directory)
            except OSError:  # not empty
                break
            directory = os.path.dirname(directory)


def write_atomically(path: str, data: bytes, staged: str = "") -> None:
    """Readers see the old file or the whole new one: a local file is written beside (``.tmp-<name>-*``) and renamed
    over; a GCS object only becomes visible once its upload is complete. ``staged``: the failpoint reached between."""
    if not is_local_path(path):
        with FileSystems.create(path, mime_type="application/octet-stream",
                                compression_type=CompressionTypes.UNCOMPRESSED) as f:
            f.write(data)
        return
    local = path[len("file://"):] if path.startswith("file://") else path
    os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(local)}-", dir=os.path.dirname(local) or ".")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if staged:
            failpoints.reached(staged)
        os.replace(temporary, local)
    except BaseException:
        os.unlink(temporary)
        raise


def _name(folder: str) -> str:
    return folder.rstrip("/").rsplit("/", 1)[-1]


def latest_run(output: str) -> str:
    """The run folder OUTPUT/LATEST names ("" without LATEST): the published run."""
    latest = FileSystems.join(output, LATEST)
    if not FileSystems.exists(latest):
        return ""
    with FileSystems.open(latest, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return FileSystems.join(output, f.read().decode("utf-8").strip())


def publish(output: str, folder: str) -> None:
    """Point OUTPUT/LATEST at a complete run folder (relative, so a copied output folder still works). The complete
    run LATEST named until now is marked PUBLISHED first, so it is still known to be published once LATEST names
    another; the run LATEST names is published by definition, so no kill leaves a published run unknown as one."""
    relative = folder[len(output):].strip("/")
    replaced = latest_run(output)
    if replaced and _name(replaced) != _name(folder) and FileSystems.exists(FileSystems.join(replaced, LAYOUT[-1])):
        write_atomically(FileSystems.join(replaced, PUBLISHED),
                         f"{LATEST} named this run until {relative} was published\n".encode("utf-8"))
        failpoints.reached("previous_marked")
    write_atomically(FileSystems.join(output, LATEST), (relative + "\n").encode("utf-8"), staged="latest_staged")


def stale_latest_copies(output: str, keep: str) -> list[str]:
    """The temporary copies of LATEST that jobs killed while writing it left in a local --output, from before the run
    ``keep`` started (a later one may be another job's write in progress); GCS writes leave none."""
    if not is_local_path(output):
        return []
    started = datetime.datetime.strptime(_name(keep), RUN_ID).replace(
        tzinfo=datetime.timezone.utc).timestamp()
    copies = FileSystems.match([FileSystems.join(output, f".tmp-{LATEST}-*")])[0].metadata_list
    return sorted(m.path for m in copies if m.last_updated_in_seconds < started)


def remove_run(folder: str, files: list[str], above: str) -> None:
    """Delete one run: its metadata.json first, so a run is never half-deleted yet still marked complete. Locally
    the folders it leaves empty are removed too, up to (not including) ``above``."""
    marker = FileSystems.join(folder, LAYOUT[-1])
    if marker in files:
        FileSystems.delete([marker])
        failpoints.reached("removed_marker")
    rest = [f for f in files if f != marker]
    if rest:
        FileSystems.delete(rest)
    if is_local_path(folder):
        _remove_empty_folders([os.path.dirname(f) for f in files], above)


def check_intact(folder: str, written: list[dict]) -> None:
    """Every file the run wrote is still in its folder: checked before metadata.json, so a run whose unfinished
    folder another job's clean-up removed (two jobs on one --output) fails instead of publishing missing shards."""
    listed = {m.path for result in FileSystems.match([FileSystems.join(folder, "**")]) for m in result.metadata_list}
    missing = sorted(f["path"] for f in written if f["path"] not in listed)
    if missing:
        raise RunChangedError(
            f"{len(missing)} of the {len(written)} files this run wrote are no longer there (first: {missing[0]}), so "
            f"it is not published: another job on the same --output deletes unfinished runs that started before it "
            f"when it publishes; run one job per --output at a time")


def never_published(complete: set[str], published: set[str]) -> set[str]:
    """The complete runs (names) that were never published, given the runs known to be (the one LATEST names, those
    marked PUBLISHED). Versions before the marker marked none, so a complete run that started before every known one
    counts as published: they may have published it (a run they failed to publish looks the same), and no user
    loses a published run on upgrade. Later, every run LATEST leaves is marked as it leaves."""
    first = min(published, default=None)
    return {run for run in complete - published if first is None or run > first}


def _runs(output: str) -> dict[str, list[str]]:
    """Every run folder under OUTPUT/runs/ with its files, from one listing."""
    runs_dir = FileSystems.join(output, RUNS)
    runs: dict[str, list[str]] = {}
    for path in _files([FileSystems.join(runs_dir, "**")]):
        runs.setdefault(FileSystems.join(runs_dir, path[len(runs_dir):].strip("/").split("/")[0]), []).append(path)
    return runs


def _unpublished(output: str, runs: dict[str, list[str]], publishing: str = "") -> set[str]:
    """The names of the complete runs in ``runs`` (OUTPUT/runs/) never published. ``publishing`` (the run publishing
    now) does not count: on an output it publishes first, every run before it would pass for an older version's."""
    def having(name: str) -> set[str]:
        return {_name(folder) for folder, files in runs.items() if FileSystems.join(folder, name) in files}

    published = having(PUBLISHED) | {_name(latest_run(output))}
    return never_published(having(LAYOUT[-1]), published - {"", _name(publishing)})


def was_published(folder: str) -> bool:
    """Whether the complete run ``folder`` was published. One that cannot be told counts as published: outside a
    runs/ folder (a copy, the legacy layout), or in a runs/ folder without LATEST beside it (a copy of the folder or
    of one run; or an output whose first publish never happened)."""
    runs_dir, name = FileSystems.split(folder.rstrip("/"))
    output, parent = FileSystems.split(runs_dir)
    return parent != RUNS or not latest_run(output) or name not in _unpublished(output, _runs(output))


def previous_runs(output: str, keep: str, keep_complete: bool) -> list[tuple[str, list[str], str]]:
    """(folder, files, folder above it) of every run under --output other than ``keep`` that publishing ``keep``
    removes, the legacy layout included: complete published runs unless ``keep_complete`` (--keep_runs), and
    unfinished runs (failed or killed jobs) and complete ones never published (failed or killed before LATEST, or
    empty) if they started before ``keep`` (run folders are named by start time); a later one may be a job still
    writing or publishing."""
    runs = _runs(output)
    unpublished = _unpublished(output, runs, publishing=keep)
    found = [(folder, files, FileSystems.join(output, RUNS)) for folder, files in sorted(runs.items())]
    legacy = legacy_outputs(output)
    if legacy:
        found.append((output, legacy, output))

    def kept(folder: str, files: list[str]) -> bool:
        complete = FileSystems.join(folder, LAYOUT[-1]) in files
        if folder == output:  # the legacy layout had no LATEST: complete was published
            return complete and keep_complete
        if complete and _name(folder) not in unpublished:
            return keep_complete
        return _name(folder) > _name(keep)

    return [(folder, files, above) for folder, files, above in found if folder != keep and not kept(folder, files)]


WRITTEN = "written"
# Shard sizing for TFRecords is decided before any image is read, from the record count and this estimate of a
# record's bytes: text, tokens and features (~6 KB) plus the image, per output pixel (measured on MIMIC-size
# radiographs: PNG ~0.6 B/px, JPEG q95 ~0.3 B/px, an edge map PNG ~0.15 B/px). metadata.json records the real sizes.
TEXT_BYTES = 6 * 2 ** 10
BYTES_PER_PIXEL = {"png": 0.6, "jpeg": 0.3, "edge_map": 0.15}
MIN_SHARDS = 32  # over all splits, of one size: a small run still spreads the image work evenly over the cores...
MIN_RECORDS_PER_SHARD = 32  # ...but never shards of a handful of records


def estimated_record_bytes(images: ImageSettings | None, other_bytes: int = TEXT_BYTES) -> int:
    """A record's bytes: ``other_bytes`` (ids, text, features; an ECG) plus its image's estimate."""
    if images is None:
        return other_bytes
    pixels = images.size * images.size
    per_pixel = BYTES_PER_PIXEL[images.fmt] + (BYTES_PER_PIXEL["edge_map"] if images.edge_map else 0.0)
    return other_bytes + int(pixels * per_pixel)


def example_plan(target_shard_mb: float, images: ImageSettings | None, other_bytes: int = TEXT_BYTES) -> ShardPlan:
    return ShardPlan(target_shard_mb * 2 ** 20, item_bytes=estimated_record_bytes(images, other_bytes),
                     min_shards=MIN_SHARDS, min_items=MIN_RECORDS_PER_SHARD)


class Serialize:
    """An encoder for records that need nothing beyond their own fields: ``to_example(record) -> bytes``."""

    def __init__(self, to_example: Callable[[Any], bytes]):
        self._to_example = to_example

    def setup(self):
        pass

    def fetch(self, record) -> None:
        """Nothing to read."""

    def encode(self, record, fetched: None) -> tuple[bytes | None, list]:
        return self._to_example(record), []


class _Examples:
    """The TFRecord renderer: record -> its image read and preprocessed (if any) -> the cohort's encoder (which may
    read more, e.g. an ECG, and may reject) -> serialised tf.train.Example. A record whose image or encoding fails is
    not written; it becomes a reject (a value the Example cannot hold: images/encode_failed). Every written record is
    emitted again without its pixels (tag ``written``) for the manifest and the counts. The reads of both (``fetch``)
    run on the writer's read-ahead threads, as far ahead as the image loader's ``read_ahead``."""

    def __init__(self, images: ImageLoader | None, encoder):
        self._images = images
        self._encoder = encoder
        self.read_ahead = images.read_ahead if images is not None else 0

    def setup(self):
        if self._images is not None:
            self._images.setup()
        self._encoder.setup()

    def fetch(self, record):
        """(the record's image bytes or the read's OSError, None when it has no image to read; what the encoder
        reads)."""
        # a record may have no image (an unpaired ICU stay)
        image = self._images.fetch(record) if self._images is not None and record.image_path else None
        return image, self._encoder.fetch(record)

    def render(self, record, fetched):
        image, encoder_input = fetched
        outputs: list = []
        if image is not None:
            record, outputs = self._images.load(record, image)
            if record is None:
                return None, outputs
        try:
            payload, more = self._encoder.encode(record, encoder_input)
        except tfrecord.FeatureError as err:
            return None, _encode_failed(record, str(err))
        if payload is None:
            return None, outputs + more
        return payload, outputs + more + [beam.pvalue.TaggedOutput(WRITTEN, without_pixels(record))]


def _encode_failed(record, detail: str) -> list:
    """A record whose Example cannot be serialised, counted as an image the writer could not encode (ImageLoader's
    rejects: stage images, counted as rejected). Its image events are dropped with it: they count written images."""
    return list(accounting.reject("images", "encode_failed", subject_id=record.subject_id, study_id=record.study_id,
                                  dicom_id=record.dicom_id, detail=detail, counter="rejected"))


class WriteExamples(beam.PTransform):
    """Records (no pixels) -> TFRecord shards per split, the image work done inside the shard writer. Outputs
    {"files", "written" (records actually written, without pixels), "rejects", "events"}. ``encoder``: how a
    record becomes its Example (``Serialize(to_example)`` or an object with setup(), fetch() and encode()); ``key``: the
    record's unique key, which orders and places it; ``after``: checks that must pass before any image is read."""

    def __init__(self, output: str, plan: ShardPlan, compression: str, images: ImageLoader | None, encoder,
                 key: Callable[[Any], str], after: beam.PCollection):
        super().__init__()
        self._output = output
        self._plan = plan
        self._gzip = compression == "gzip"
        self._images = images
        self._encoder = encoder
        self._key = key
        self._after = after

    def expand(self, records):
        fmt = ShardFormat(".tfrecord.gz" if self._gzip else ".tfrecord", tfrecord.frame, gzip=self._gzip)
        key = self._key
        return (records
                | "KeyBySplit" >> beam.Map(lambda r: (r.split, key(r), r))
                | "WriteTFRecords" >> WriteShards(
                    FileSystems.join(self._output, "tfrecords"), mimic.SPLITS, fmt, self._plan,
                    renderer=_Examples(self._images, self._encoder),
                    tags=(WRITTEN, accounting.REJECTS, accounting.EVENTS), after=self._after))


class WriteOutputs(beam.PTransform):
    """{"records" (as written), "rejects"[, "audit"]} -> manifest, rejects (and audit) shards; outputs one dict per
    file written."""

    def __init__(self, output: str, manifest: Manifest = ED_MANIFEST):
        super().__init__()
        self._output = output
        self._manifest = manifest

    def expand(self, inputs):
        records, rejects = inputs["records"], inputs["rejects"]
        out, spec = self._output, self._manifest
        text_plan = ShardPlan(TEXT_SHARD_BYTES)
        manifest = (records
                    | "ToManifestRow" >> beam.Map(lambda r: ("manifest", spec.key(r), spec.line(r)))
                    | "WriteManifest" >> WriteShards(
                        FileSystems.join(out, "manifest"), ["manifest"],
                        ShardFormat(".csv", header=csv_line(spec.columns)), text_plan))
        reject_files = (rejects
                        | "ToRejectLine" >> beam.Map(_keyed_reject)
                        | "WriteRejects" >> WriteShards(
                            FileSystems.join(out, "rejects"), ["rejects"], ShardFormat(".jsonl"), text_plan,
                            unique_keys=False))
        files = [manifest, reject_files]
        if "audit" in inputs:
            files.append(inputs["audit"]
                         | "ToAuditLine" >> beam.Map(lambda row: ("leakage-audit", row["dicom_id"], _json_line(row)))
                         | "WriteAudit" >> WriteShards(FileSystems.join(out, "audit"), ["leakage-audit"],
                                                       ShardFormat(".jsonl"), text_plan))
        return files | "AllFiles" >> beam.Flatten()
