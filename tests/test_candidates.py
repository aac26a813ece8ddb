import collections
import csv
import hashlib
import random

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline import accounting
from beam_pipeline.transforms.candidates import (CANDIDATE_COLUMNS, CandidateSets, WriteCandidateSets,
                                                 candidate_set)
from conftest import test_pipeline

POOL = tuple(range(20000000, 20000030))


def _ids(seed=0):
    """(split, hadm_id): 40 val, 25 test, 30 train admissions, ids interleaved across splits."""
    ids = list(range(21000000, 21000095))
    random.Random(seed).shuffle(ids)
    return [("val", i) for i in ids[:40]] + [("test", i) for i in ids[40:65]] + [("train", i) for i in ids[65:]]


def test_a_set_is_reproducible_and_pinned():
    # Pinned: a change of draw algorithm would silently change every published candidate file.
    assert candidate_set(20000001, POOL, 0, 9) == (20000020, 20000017, 20000012, 20000028, 20000003, 20000015,
                                                   20000025, 20000016, 20000021)
    shuffled = list(POOL) * 2  # any order, ids repeated
    random.Random(5).shuffle(shuffled)
    assert candidate_set(20000001, shuffled, 0, 9) == candidate_set(20000001, POOL, 0, 9)


def test_a_different_seed_gives_different_sets():
    first = [candidate_set(q, POOL, 0, 9) for q in POOL]
    second = [candidate_set(q, POOL, 1, 9) for q in POOL]
    assert sum(a != b for a, b in zip(first, second)) >= len(POOL) - 1
    assert len(set(first)) == len(POOL)  # queries do not share one draw either


def test_sets_are_distinct_negatives_drawn_evenly():
    counts = collections.Counter()
    for query in POOL:
        for seed in range(40):
            drawn = candidate_set(query, POOL, seed, 9)
            assert len(drawn) == 9 and len(set(drawn)) == 9
            assert query not in drawn and set(drawn) <= set(POOL)
            counts.update(drawn)
    expected = len(POOL) * 40 * 9 / len(POOL)  # each id is a negative for 9/29 of the other queries' draws
    assert all(abs(n - expected) < 0.2 * expected for n in counts.values())
    assert set(counts) == set(POOL)


def test_a_short_pool_gives_all_others_and_a_query_outside_the_pool_draws_from_all():
    drawn = candidate_set(3, [1, 2, 3, 4, 5], 0, 9)
    assert sorted(drawn) == [1, 2, 4, 5]
    assert candidate_set(3, [3], 0, 9) == ()
    assert candidate_set(3, [], 0, 9) == ()
    assert sorted(candidate_set(99, [1, 2, 3], 0, 9)) == [1, 2, 3]
    for query in (POOL[0], POOL[14], POOL[-1]):  # the query skipped wherever it sits in the sorted pool
        assert sorted(candidate_set(query, POOL, 0, 29)) == [i for i in POOL if i != query]


def _expected_rows(ids, splits=("val", "test"), seed=0, negatives=9):
    rows = []
    for split in splits:
        pool = [i for s, i in ids if s == split]
        for query in pool:
            drawn = candidate_set(query, pool, seed, negatives)
            for position, (candidate, label) in enumerate([(query, 1)] + [(c, 0) for c in drawn]):
                rows.append((split, f"{query:012d}/{position:03d}", f"{query},{candidate},{label}\n".encode()))
    return rows


def test_candidate_sets_in_beam_equal_the_pure_draw_per_split():
    ids = _ids()
    with test_pipeline() as p:
        sets = p | beam.Create(ids) | CandidateSets(seed=7)
        assert_that(sets.rows, equal_to(_expected_rows(ids, seed=7)), label="Rows")
        assert_that(sets[accounting.EVENTS] | beam.combiners.ToList() | beam.Map(accounting.sum_events),
                    equal_to([{"candidates/queries/test": 25, "candidates/negatives/test": 225,
                               "candidates/queries/val": 40, "candidates/negatives/val": 360}]), label="Events")


def test_short_sets_are_counted():
    ids = [("val", 1), ("val", 2), ("val", 3), ("test", 4)]
    with test_pipeline() as p:
        sets = p | beam.Create(ids) | CandidateSets(splits=("val", "test"), negatives=5)
        assert_that(sets[accounting.EVENTS] | beam.combiners.ToList() | beam.Map(accounting.sum_events),
                    equal_to([{"candidates/queries/test": 1, "candidates/queries/val": 3,
                               "candidates/short_sets/test": 1, "candidates/short_sets/val": 3,
                               "candidates/negatives/val": 6}]))


def test_an_id_listed_twice_in_a_split_fails_the_job():
    with pytest.raises(Exception, match="hadm_id 2 is listed twice in split 'val'"):
        with test_pipeline() as p:
            _ = p | beam.Create([("val", 1), ("val", 2), ("val", 2)]) | CandidateSets()


def _write(directory, ids, splits=("val", "test"), seed=0, rows_per_query=10):
    with test_pipeline() as p:
        written = p | beam.Create(ids, reshuffle=True) | WriteCandidateSets(str(directory), splits, seed, 9)
        assert_that(written["files"] | beam.Map(lambda f: (f["group"], f["shard"], f["records"])),
                    equal_to([(split, 0, rows_per_query * sum(s == split for s, _ in ids)) for split in splits]),
                    label="Files")


def _read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_written_files_hold_one_positive_then_nine_negatives_per_query(tmp_path):
    ids = _ids()
    _write(tmp_path, ids)
    assert sorted(p.name for p in (tmp_path / "candidates").iterdir()) == [
        "test-00000-of-00001.csv", "val-00000-of-00001.csv"]
    for split in ("val", "test"):
        rows = _read(tmp_path / "candidates" / f"{split}-00000-of-00001.csv")
        assert tuple(rows[0]) == CANDIDATE_COLUMNS
        pool = {i for s, i in ids if s == split}
        body = [(int(q), int(c), int(label)) for q, c, label in rows[1:]]
        sets = [body[i:i + 10] for i in range(0, len(body), 10)]
        assert [s[0][0] for s in sets] == sorted(pool)  # sorted by query
        for rows_of_query in sets:
            query = rows_of_query[0][0]
            assert {q for q, _, _ in rows_of_query} == {query}
            assert rows_of_query[0] == (query, query, 1)
            negatives = [c for _, c, label in rows_of_query[1:] if label == 0]
            assert len(negatives) == 9 and len(set(negatives)) == 9
            assert query not in negatives and set(negatives) <= pool  # from its own split only
            assert tuple(negatives) == candidate_set(query, pool, 0, 9)


def _digests(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_written_files_are_byte_identical_for_shuffled_input_and_change_with_the_seed(tmp_path):
    ids = _ids()
    shuffled = list(ids)
    random.Random(2).shuffle(shuffled)
    _write(tmp_path / "a", ids)
    _write(tmp_path / "b", shuffled)
    _write(tmp_path / "c", ids, seed=1)
    first = _digests(tmp_path / "a" / "candidates")
    assert first == _digests(tmp_path / "b" / "candidates")
    other = _digests(tmp_path / "c" / "candidates")
    assert all(first[name] != other[name] for name in first)


def test_every_listed_split_gets_a_file_even_when_empty(tmp_path):
    _write(tmp_path, [("val", 1), ("train", 2)], splits=("val", "test"), rows_per_query=1)
    empty = tmp_path / "candidates" / "test-00000-of-00001.csv"
    assert empty.read_bytes() == b"query_hadm_id,candidate_hadm_id,label\n"
    assert _read(tmp_path / "candidates" / "val-00000-of-00001.csv") == [list(CANDIDATE_COLUMNS), ["1", "1", "1"]]
