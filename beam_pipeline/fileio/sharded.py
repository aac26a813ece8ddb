"""Deterministic sharded files: the same records always give the same bytes in the same file names.

Each element is ``(group, key, item)``. Per group the shard count follows from the group's size (``ShardPlan``:
``ceil(total bytes / target)``, where an item's bytes are its payload's length or an estimate, with an optional
floor so a small dataset still spreads over several shards). The group's records are ordered by a hash of their key
(the first 8 bytes of sha256) and cut into that many runs of consecutive records whose sizes differ by at most one
(as TensorFlow Datasets does), so shards hold equal numbers of records (± one) whose keys are scattered at random;
items are written sorted by key inside a shard. Files
are ``<dir>/<group>-SSSSS-of-NNNNN<suffix>``; every shard of every expected group exists, empty ones included, so
readers can rely on the pattern. Duplicate keys fail the job when keys must be unique (two records for one dicom_id
mean a bug upstream).

An item is its payload bytes, or, with a ``Renderer``, whatever the renderer turns into a payload inside the
writer, one item at a time, as it appends to the file: the image stage runs there, so pixels are never shuffled.
The renderer's input (an image file) is fetched by ``fetch``; with ``read_ahead`` N > 0 the writer fetches the next N
items' inputs on N I/O threads while it renders one, so storage latency overlaps the CPU work; the file's bytes and
order do not change, and at most N + 1 fetched inputs are held at a time.
"""

from __future__ import annotations

import array
import bisect
import collections
import dataclasses
import gzip
import hashlib
import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Protocol

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


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """How many shards each group gets: ``ceil(bytes / target_bytes)``, and at least ``min_shards`` over all groups
    together as long as each still holds ``min_items`` items. The floor is one records-per-shard count for every
    group, so shards are about the same size in every group: they are the writers' work units, and a local runner
    deals them to its workers round-robin, which only balances units of one size. ``item_bytes`` (when set) is the
    size estimate used for every item instead of its payload length."""
    target_bytes: float
    item_bytes: int = 0
    min_shards: int = 1
    min_items: int = 1

    def size(self, item) -> int:
        return self.item_bytes or len(item)

    def shards(self, group: str, totals: dict[str, tuple[int, int]]) -> int:
        """Shards of ``group`` given every group's (items, bytes); never more than its items (a tiny target would
        otherwise ask for empty shards by the hundred thousand), and one for an empty group."""
        items, total_bytes = totals.get(group, (0, 0))
        per_shard = max(self.min_items, math.ceil(sum(n for n, _ in totals.values()) / self.min_shards))
        return max(1, min(items, max(num_shards(total_bytes, self.target_bytes), math.ceil(items / per_shard))))


class Renderer(Protocol):
    """Turns an item into its payload inside the writer. ``fetch`` does the item's I/O (thread-safe; errors the
    renderer handles are returned, not raised); ``render`` gets the item and what ``fetch`` returned, and returns
    (payload, or None to skip the item; tagged outputs to emit, e.g. rejects, events, the item as written).
    ``read_ahead``: how many items' fetches may run ahead of the one being rendered (0: fetch each in turn)."""
    read_ahead: int

    def setup(self) -> None: ...

    def fetch(self, item) -> Any: ...

    def render(self, item, fetched) -> tuple[bytes | None, list[Any]]: ...


def fetched_in_order(items: Iterable, fetch: Callable[[Any], Any], pool: ThreadPoolExecutor | None,
                     ahead: int) -> Iterable[tuple[Any, Any]]:
    """(item, fetch(item)) in the items' order; with a pool, up to ``ahead`` fetches run ahead of the one consumed.
    A fetch's exception is raised when its item's turn comes; fetches not yet consumed are cancelled if the consumer
    stops."""
    if pool is None or ahead <= 0:
        for item in items:
            yield item, fetch(item)
        return
    items = iter(items)
    window = collections.deque((item, pool.submit(fetch, item)) for item in itertools.islice(items, ahead))
    try:
        while window:
            item, future = window.popleft()
            for following in itertools.islice(items, 1):
                window.append((following, pool.submit(fetch, following)))
            yield item, future.result()
    finally:
        for _, future in window:
            future.cancel()


class DuplicateKeyError(RuntimeError):
    pass


class AssertUniqueKeys(beam.PTransform):
    """Keys -> nothing; fails the job on a key seen twice (run it before expensive per-record work)."""

    def expand(self, keys):
        def check(key_and_count):
            if key_and_count[1] > 1:
                raise DuplicateKeyError(f"duplicate record key {key_and_count[0]!r}: keys must be unique")
            return []

        return (keys
                | "One" >> beam.Map(lambda key: (key, 1))
                | "CountPerKey" >> beam.CombinePerKey(sum)
                | "AtMostOnce" >> beam.FlatMap(check))


def num_shards(total_bytes: int, target_bytes: float) -> int:
    return max(1, math.ceil(total_bytes / target_bytes))


def key_hash(key: str) -> int:
    """The first 8 bytes of sha256(key), big-endian: a record's place in its group's hash order."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")


def shard_of(key: str, shards: int) -> int:
    """Order-preserving hash bucket: floor(h * shards / 2**64) with h = key_hash(key). Bucket sizes vary (about
    the square root of their mean); the shard writer uses ``boundaries`` for equal shards."""
    return (key_hash(key) * shards) >> 64


def boundaries(hashes, shards: int) -> list[int]:
    """The hash at which each shard after the first starts, from a group's sorted key hashes: shard i holds the
    records of ranks floor(i*n/shards) up to floor((i+1)*n/shards) - 1, so shard sizes differ by at most one (a
    shard is empty only when there are fewer records than shards)."""
    n = len(hashes)
    return [hashes[(i * n) // shards] for i in range(1, shards)] if n else []


def shard_index(key: str, bounds: list[int]) -> int:
    return bisect.bisect_right(bounds, key_hash(key))


def shard_count(group: str, bounds: dict[str, list[int]]) -> int:
    """A group's shards from its cut points (one fewer than shards; a group without items has one empty shard)."""
    return len(bounds.get(group, ())) + 1


class _SortedHashes(beam.CombineFn):
    """(key hash, bytes) of a group's items -> (their hashes, sorted, packed 8 bytes each; total bytes)."""

    def create_accumulator(self):
        return array.array("Q"), 0

    def add_input(self, accumulator, item):
        accumulator[0].append(item[0])
        return accumulator[0], accumulator[1] + item[1]

    def merge_accumulators(self, accumulators):
        hashes, size = array.array("Q"), 0
        for more, more_size in accumulators:
            hashes.extend(more)
            size += more_size
        return hashes, size

    def extract_output(self, accumulator):
        return array.array("Q", sorted(accumulator[0])), accumulator[1]


def shard_path(directory: str, group: str, index: int, shards: int, suffix: str) -> str:
    return FileSystems.join(directory, f"{group}-{index:05d}-of-{shards:05d}{suffix}")


class _CountingWriter:
    """Passes writes on to ``raw`` and counts their bytes: the file's size, compressed or not, without asking the
    file system (a GCS upload cannot tell its size before it is closed)."""

    def __init__(self, raw):
        self._raw = raw
        self.size = 0

    def write(self, data) -> int:
        self._raw.write(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self._raw.flush()


def write_file(path: str, chunks: Iterable[bytes], compress: bool) -> int:
    """Write chunks to path (gzip with a fixed header: no name, mtime 0); return the bytes in the file (after
    compression: metadata.json's sizes are what storage holds and transfers)."""
    with FileSystems.create(path, mime_type="application/octet-stream",
                            compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        counted = _CountingWriter(raw)
        sink = gzip.GzipFile(filename="", mode="wb", fileobj=counted, mtime=0) if compress else counted
        for chunk in chunks:
            sink.write(chunk)
        if compress:
            sink.close()
    return counted.size


class _WriteShard(beam.DoFn):
    def __init__(self, directory: str, fmt: ShardFormat, unique_keys: bool, renderer: Renderer | None):
        self._directory = directory
        self._fmt = fmt
        self._unique = unique_keys
        self._renderer = renderer
        self._pool: ThreadPoolExecutor | None = None  # the read-ahead threads, made in setup

    def setup(self):
        if self._renderer is not None:
            self._renderer.setup()
            if self._renderer.read_ahead > 0:
                self._pool = ThreadPoolExecutor(self._renderer.read_ahead, thread_name_prefix="read-ahead")

    def teardown(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def process(self, element, *after):
        (group, index, shards), items = element
        items = sorted(items, key=lambda pair: pair[0])
        if self._unique:
            for (key, _), (next_key, _) in zip(items, items[1:]):
                if key == next_key:
                    raise DuplicateKeyError(f"duplicate record key {key!r} in {group}: keys must be unique")
        emitted: list = []
        written = [0]

        def frames():
            renderer = self._renderer
            if renderer is None:
                rendered = ((item, []) for _, item in items)
            else:
                rendered = (renderer.render(item, fetched) for item, fetched in fetched_in_order(
                    (item for _, item in items), renderer.fetch, self._pool, renderer.read_ahead))
            for payload, outputs in rendered:
                emitted.extend(outputs)
                if payload is not None:
                    written[0] += 1
                    yield self._fmt.frame(payload)

        path = shard_path(self._directory, group, index, shards, self._fmt.suffix)
        size = write_file(path, itertools.chain([self._fmt.header], frames()), self._fmt.gzip)
        failpoints.reached("shard_written")
        yield {"group": group, "path": path, "shard": index, "records": written[0], "bytes": size}
        yield from emitted


def _fill_missing(group, directory, fmt, bounds, written):
    """Write the empty shards of a group (fewer items than shards, or no items at all)."""
    shards = shard_count(group, bounds)
    done = {w["shard"] for w in written if w["group"] == group}
    for index in range(shards):
        if index not in done:
            path = shard_path(directory, group, index, shards, fmt.suffix)
            size = write_file(path, [fmt.header], fmt.gzip)
            yield {"group": group, "path": path, "shard": index, "records": 0, "bytes": size}


class WriteShards(beam.PTransform):
    """(group, key, item) -> files. Outputs the file records (group, path, shard, records, bytes) and, with a
    renderer, a dict {"files": ..., <each tag the renderer emits>: ...}. ``after``: a PCollection that must be
    complete before any shard is written (checks that must pass before the renderer reads anything)."""

    def __init__(self, directory: str, groups: Iterable[str], fmt: ShardFormat, plan: ShardPlan,
                 unique_keys: bool = True, renderer: Renderer | None = None, tags: tuple[str, ...] = (),
                 after: beam.PCollection | None = None):
        super().__init__()
        self._directory = directory
        self._groups = tuple(groups)
        self._fmt = fmt
        self._plan = plan
        self._unique = unique_keys
        self._renderer = renderer
        self._tags = tags
        self._after = after

    def expand(self, pcoll):
        plan = self._plan
        hashes = (pcoll
                  | "HashAndSize" >> beam.Map(lambda e: (e[0], (key_hash(e[1]), plan.size(e[2]))))
                  | "SortHashes" >> beam.CombinePerKey(_SortedHashes()))
        totals = beam.pvalue.AsDict(hashes | "Totals" >> beam.MapTuple(lambda group, h: (group, (len(h[0]), h[1]))))
        bounds = beam.pvalue.AsDict(hashes | "Boundaries" >> beam.Map(
            lambda kv, totals: (kv[0], boundaries(kv[1][0], plan.shards(kv[0], totals))), totals=totals))

        def assign(element, bounds):
            group, key, item = element
            return (group, shard_index(key, bounds[group]), shard_count(group, bounds)), (key, item)

        after = [beam.pvalue.AsList(self._after)] if self._after is not None else []
        results = (pcoll
                   | "AssignShard" >> beam.Map(assign, bounds=bounds)
                   | "GroupByShard" >> beam.GroupByKey()
                   | "WriteShard" >> beam.ParDo(_WriteShard(self._directory, self._fmt, self._unique,
                                                            self._renderer), *after).with_outputs(
                       *self._tags, main="files"))
        filled = (pcoll.pipeline
                  | "Groups" >> beam.Create(self._groups)
                  | "WriteEmptyShards" >> beam.FlatMap(_fill_missing, self._directory, self._fmt, bounds,
                                                       beam.pvalue.AsList(results.files)))
        files = (results.files, filled) | "Files" >> beam.Flatten()
        if self._renderer is None:
            return files
        return {"files": files, **{tag: results[tag] for tag in self._tags}}
