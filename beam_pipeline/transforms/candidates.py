"""Retrieval candidate sets (Symile-MIMIC, reference §A.7): each val/test admission is a query listed with itself
(label 1) and ``negatives`` other admissions of the same split (label 0).

The original draws negatives with an unseeded pandas ``.sample()`` (bug A.10.1), so its sets cannot be rebuilt.
Here a query's negatives come from a generator seeded with sha256(f"{seed}:{query}") over the split's ids in
sorted order: a set depends only on the seed, the query and the split's ids, never on other queries, input order
or bundling. The draw is a partial Fisher-Yates shuffle driven by ``Random.random()``, the one method whose
sequence Python promises to keep across versions (``Random.sample`` makes no such promise). When the split has
fewer than ``negatives`` other ids, the set holds all of them in drawn order and is counted as a short set.

Files: ``<output>/candidates/<split>-00000-of-00001.csv``, header ``query_hadm_id,candidate_hadm_id,label``, sorted
by query; per query its own row first, then its negatives in drawn order. Unlike the original (positives first, then
negatives grouped per query) each query's set is contiguous.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from typing import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import accounting
from beam_pipeline.fileio.sharded import ShardFormat, ShardPlan, WriteShards

CANDIDATE_COLUMNS = ("query_hadm_id", "candidate_hadm_id", "label")
ONE_SHARD = ShardPlan(math.inf)  # a split's set is small (10 rows per query): one file each, a fixed name


def _rng(seed: int, query: int) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(f"{seed}:{query}".encode("utf-8")).digest(), "big"))


def _draw(rng: random.Random, n: int, k: int) -> list[int]:
    """min(k, n) distinct indices of range(n) in drawn order: a partial Fisher-Yates shuffle whose swaps are kept
    in a dict, so a draw costs O(k) whatever n is."""
    swapped: dict[int, int] = {}
    drawn = []
    for i in range(min(k, n)):
        j = i + int(rng.random() * (n - i))
        drawn.append(swapped.get(j, j))
        swapped[j] = swapped.get(i, i)
    return drawn


def _from_sorted_pool(query: int, pool: Sequence[int], seed: int, negatives: int) -> tuple[int, ...]:
    """candidate_set on a sorted pool without duplicates: O(negatives + log n), the query skipped by index."""
    at = bisect.bisect_left(pool, query)
    skip = at < len(pool) and pool[at] == query
    others = len(pool) - 1 if skip else len(pool)
    return tuple(pool[i + 1 if skip and i >= at else i] for i in _draw(_rng(seed, query), others, negatives))


def candidate_set(query: int, pool: Sequence[int], seed: int, negatives: int) -> tuple[int, ...]:
    """``negatives`` distinct ids of ``pool`` other than ``query``, drawn without replacement (all of them, in
    drawn order, when there are fewer). The pool's order and repeated ids do not matter."""
    return _from_sorted_pool(query, sorted(set(pool)), seed, negatives)


def _line(values) -> bytes:
    return (",".join(str(v) for v in values) + "\n").encode("utf-8")


def _sorted_pool(split_and_ids):
    split, ids = split_and_ids
    pool = sorted(ids)
    for a, b in zip(pool, pool[1:]):
        if a == b:
            raise ValueError(f"hadm_id {a} is listed twice in split {split!r}: candidate pools need unique ids")
    return split, tuple(pool)


class _DrawCandidates(beam.DoFn):
    """(split, query) -> its rows (split, key, csv line), and events."""

    def __init__(self, seed: int, negatives: int):
        self._seed = seed
        self._negatives = negatives
        self._width = max(3, len(str(negatives)))  # positions sort as text within a query

    def process(self, element, pools):
        split, query = element
        drawn = _from_sorted_pool(query, pools[split], self._seed, self._negatives)
        yield accounting.event(f"candidates/queries/{split}")
        if drawn:
            yield accounting.event(f"candidates/negatives/{split}", len(drawn))
        if len(drawn) < self._negatives:
            yield accounting.event(f"candidates/short_sets/{split}")
        for position, (candidate, label) in enumerate([(query, 1)] + [(c, 0) for c in drawn]):
            yield split, f"{query:012d}/{position:0{self._width}d}", _line((query, candidate, label))


class CandidateSets(beam.PTransform):
    """(split, hadm_id) -> {"rows": (split, key, csv line) for WriteShards, "events"}: every id of a listed split
    is a query; other splits are ignored. Each split's ids travel to every worker as a side input (tens of MB per
    million ids). An id listed twice in a split fails the job."""

    def __init__(self, splits: Sequence[str] = ("val", "test"), seed: int = 0, negatives: int = 9):
        super().__init__()
        self._splits = tuple(splits)
        self._seed = seed
        self._negatives = negatives

    def expand(self, ids):
        listed = ids | "ListedSplits" >> beam.Filter(lambda element, splits: element[0] in splits, self._splits)
        pools = (listed
                 | "IdsPerSplit" >> beam.GroupByKey()
                 | "SortedPool" >> beam.Map(_sorted_pool))
        return listed | "DrawPerQuery" >> beam.ParDo(
            _DrawCandidates(self._seed, self._negatives), pools=beam.pvalue.AsDict(pools)).with_outputs(
                accounting.EVENTS, main="rows")


class WriteCandidateSets(beam.PTransform):
    """(split, hadm_id) -> one CSV per listed split under ``<output>/candidates/`` (header only when the split is
    empty). Outputs {"files": the file records, "events"}."""

    def __init__(self, output: str, splits: Sequence[str], seed: int, negatives: int):
        super().__init__()
        self._output = output
        self._splits = tuple(splits)
        self._seed = seed
        self._negatives = negatives

    def expand(self, ids):
        sets = ids | "CandidateSets" >> CandidateSets(self._splits, self._seed, self._negatives)
        files = sets.rows | "WriteCandidates" >> WriteShards(
            FileSystems.join(self._output, "candidates"), self._splits,
            ShardFormat(".csv", header=_line(CANDIDATE_COLUMNS)), ONE_SHARD)
        return {"files": files, "events": sets[accounting.EVENTS]}
