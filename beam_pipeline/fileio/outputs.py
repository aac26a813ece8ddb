"""The output layout under --output and the line formats of the manifest and rejects.

    manifest/manifest-SSSSS-of-NNNNN.csv       one row per record, header in every shard
    tfrecords/{split}-SSSSS-of-NNNNN.tfrecord  one tf.train.Example per manifest row (.tfrecord.gz with gzip)
    rejects/rejects-SSSSS-of-NNNNN.jsonl       one JSON object per rejected row or image
    audit/leakage-audit-SSSSS-of-NNNNN.jsonl   only with --leakage_audit: unfiltered notes, never for training
    metadata.json                              config, versions, feature spec, label order, counts (written last)
"""

from __future__ import annotations

import csv
import io
import json

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import accounting, mimic
from beam_pipeline.fileio import tfrecord
from beam_pipeline.fileio.sharded import ShardFormat, WriteShards
from beam_pipeline.transforms.examples import to_example
from beam_pipeline.transforms.records import Record

MANIFEST_COLUMNS = ("subject_id", "study_id", "dicom_id", "stay_id", "split", "study_datetime", "ed_intime",
                    "ed_outtime", "hours_from_arrival")
LAYOUT = ("manifest", "tfrecords", "rejects", "audit", "metadata.json")
TEXT_SHARD_BYTES = 256 * 2 ** 20


class OutputExistsError(RuntimeError):
    pass


def _csv_line(values) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue().encode("utf-8")


def manifest_line(record: Record) -> bytes:
    hours = f"{record.hours_from_arrival:.3f}"
    return _csv_line([
        record.subject_id, record.study_id, record.dicom_id, record.stay_id, record.split,
        mimic.format_datetime(record.study_time), mimic.format_datetime(record.ed_intime),
        mimic.format_datetime(record.ed_outtime) if record.ed_outtime else "",
        "0.000" if hours == "-0.000" else hours,
    ])


def _json_line(row: dict) -> bytes:
    return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")


def reject_line(row: dict) -> bytes:
    return _json_line({k: row[k] for k in accounting.REJECT_FIELDS})


def _keyed_reject(row: dict) -> tuple[str, str, bytes]:
    line = reject_line(row)
    return "rejects", line.decode("utf-8"), line


def existing_outputs(output: str) -> list[str]:
    patterns = [FileSystems.join(output, name, "*") for name in LAYOUT[:-1]] + [FileSystems.join(output, LAYOUT[-1])]
    return sorted(m.path for result in FileSystems.match(patterns) for m in result.metadata_list)


def prepare_output(output: str, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder; with overwrite, delete the previous run's files (nothing else)."""
    existing = existing_outputs(output)
    if existing and not overwrite:
        raise OutputExistsError(f"{output} already holds the outputs of a run ({len(existing)} files, e.g. "
                                f"{existing[0]}); pass --overwrite to replace them or choose another --output")
    if existing:
        FileSystems.delete(existing)


class WriteOutputs(beam.PTransform):
    """{"records", "rejects"[, "audit"]} -> manifest, TFRecord, rejects (and audit) shards; outputs one dict per
    file written."""

    def __init__(self, output: str, target_shard_mb: float, compression: str):
        super().__init__()
        self._output = output
        self._target = target_shard_mb * 2 ** 20
        self._gzip = compression == "gzip"

    def expand(self, inputs):
        records, rejects = inputs["records"], inputs["rejects"]
        out = self._output
        tfrecords = (records
                     | "ToExample" >> beam.Map(lambda r: (r.split, r.dicom_id, to_example(r)))
                     | "WriteTFRecords" >> WriteShards(
                         FileSystems.join(out, "tfrecords"), mimic.SPLITS,
                         ShardFormat(".tfrecord.gz" if self._gzip else ".tfrecord", tfrecord.frame, gzip=self._gzip),
                         self._target))
        manifest = (records
                    | "ToManifestRow" >> beam.Map(
                        lambda r: ("manifest", f"{r.subject_id:09d}/{r.study_id:09d}/{r.dicom_id}", manifest_line(r)))
                    | "WriteManifest" >> WriteShards(
                        FileSystems.join(out, "manifest"), ["manifest"],
                        ShardFormat(".csv", header=_csv_line(MANIFEST_COLUMNS)), TEXT_SHARD_BYTES))
        reject_files = (rejects
                        | "ToRejectLine" >> beam.Map(_keyed_reject)
                        | "WriteRejects" >> WriteShards(
                            FileSystems.join(out, "rejects"), ["rejects"], ShardFormat(".jsonl"), TEXT_SHARD_BYTES,
                            unique_keys=False))
        files = [tfrecords, manifest, reject_files]
        if "audit" in inputs:
            files.append(inputs["audit"]
                         | "ToAuditLine" >> beam.Map(lambda row: ("leakage-audit", row["dicom_id"], _json_line(row)))
                         | "WriteAudit" >> WriteShards(FileSystems.join(out, "audit"), ["leakage-audit"],
                                                       ShardFormat(".jsonl"), TEXT_SHARD_BYTES))
        return files | "AllFiles" >> beam.Flatten()
