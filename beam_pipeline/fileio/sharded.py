"""Deterministic sharded files: the same records always give the same bytes in the same file names.

Each element is ``(group, key, payload)``. Per group the shard count is ``ceil(total payload bytes / target)``, a
record's shard is a pure function of its key (sha256 scaled into the shard range, as TensorFlow Datasets does), and
records are sorted by key inside a shard. Files are ``<dir>/<group>-SSSSS-of-NNNNN<suffix>``; every shard of every
expected group exists, empty ones included, so readers can rely on the pattern. Duplicate keys fail the job when
keys must be unique (two records for one dicom_id mean a bug upstream).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
from typing import Callable, Iterable

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import failpoints


@dataclasses.dataclass(frozen=True)
class ShardFormat:
    suffix: str  # ".tfrecord", ".csv", ".jsonl" (+ ".gz" when gzip)
    frame: Callable[[bytes], bytes] = staticmethod(lambda payload: payload)
    header: bytes = b""  # written at the top of every shard (CSV header)
    gzip: bool = False


class DuplicateKeyError(RuntimeError):
    pass


def num_shards(total_bytes: int, target_bytes: float) -> int:
    return max(1, math.ceil(total_bytes / target_bytes))


def shard_of(key: str, shards: int) -> int:
    """Order-preserving hash bucket: floor(h * shards / 2**64) with h the first 8 bytes of sha256(key)."""
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    return (h * shards) >> 64


def shard_path(directory: str, group: str, index: int, shards: int, suffix: str) -> str:
    return FileSystems.join(directory, f"{group}-{index:05d}-of-{shards:05d}{suffix}")


def write_file(path: str, chunks: Iterable[bytes], compress: bool) -> int:
    """Write chunks to path (gzip with a fixed header: no name, mtime 0); return the uncompressed size."""
    size = 0
    with FileSystems.create(path, mime_type="application/octet-stream",
                            compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        sink = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if compress else raw
        for chunk in chunks:
            sink.write(chunk)
            size += len(chunk)
        if compress:
            sink.close()
    return size


class _WriteShard(beam.DoFn):
    def __init__(self, directory: str, fmt: ShardFormat, unique_keys: bool):
        self._directory = directory
        self._fmt = fmt
        self._unique = unique_keys

    def process(self, element):
        (group, index, shards), items = element
        items = sorted(items)
        if self._unique:
            for (key, _), (next_key, _) in zip(items, items[1:]):
                if key == next_key:
                    raise DuplicateKeyError(f"duplicate record key {key!r} in {group}: keys must be unique")
        path = shard_path(self._directory, group, index, shards, self._fmt.suffix)
        chunks = [self._fmt.header] + [self._fmt.frame(payload) for _, payload in items]
        size = write_file(path, chunks, self._fmt.gzip)
        failpoints.reached("shard_written")
        yield {"group": group, "path": path, "shard": index, "records": len(items), "bytes": size}


def _fill_missing(group, directory, fmt, target_bytes, totals, written):
    """Write the empty shards of a group (no record hashed there, or no records at all)."""
    shards = num_shards(totals.get(group, (0, 0))[1], target_bytes)
    done = {w["shard"] for w in written if w["group"] == group}
    for index in range(shards):
        if index not in done:
            path = shard_path(directory, group, index, shards, fmt.suffix)
            size = write_file(path, [fmt.header], fmt.gzip)
            yield {"group": group, "path": path, "shard": index, "records": 0, "bytes": size}


def _sum_pairs(pairs):
    pairs = list(pairs)
    return sum(p[0] for p in pairs), sum(p[1] for p in pairs)


class WriteShards(beam.PTransform):
    """(group, key, payload) -> files; outputs one dict per file written (group, path, shard, records, bytes)."""

    def __init__(self, directory: str, groups: Iterable[str], fmt: ShardFormat, target_bytes: float,
                 unique_keys: bool = True):
        super().__init__()
        self._directory = directory
        self._groups = tuple(groups)
        self._fmt = fmt
        self._target = target_bytes
        self._unique = unique_keys

    def expand(self, pcoll):
        target = self._target
        totals = beam.pvalue.AsDict(
            pcoll
            | "SizeOf" >> beam.Map(lambda e: (e[0], (1, len(e[2]))))
            | "SumSizes" >> beam.CombinePerKey(_sum_pairs))

        def assign(element, totals):
            group, key, payload = element
            shards = num_shards(totals[group][1], target)
            return (group, shard_of(key, shards), shards), (key, payload)

        written = (pcoll
                   | "AssignShard" >> beam.Map(assign, totals=totals)
                   | "GroupByShard" >> beam.GroupByKey()
                   | "WriteShard" >> beam.ParDo(_WriteShard(self._directory, self._fmt, self._unique)))
        filled = (pcoll.pipeline
                  | "Groups" >> beam.Create(self._groups)
                  | "WriteEmptyShards" >> beam.FlatMap(_fill_missing, self._directory, self._fmt, target, totals,
                                                       beam.pvalue.AsList(written)))
        return (written, filled) | "Files" >> beam.Flatten()
