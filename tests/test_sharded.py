import gzip
import hashlib

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline.fileio import tfrecord
from beam_pipeline.fileio.sharded import DuplicateKeyError, ShardFormat, WriteShards, num_shards, shard_of
from conftest import test_pipeline

TFRECORD = ShardFormat(".tfrecord", tfrecord.frame)


def _elements(n, group="train"):
    return [(group, f"key{i:04d}", tfrecord.serialize_example({"i": (tfrecord.INT64, [i]),
                                                               "name": (tfrecord.BYTES, [f"n{i}".encode()])}))
            for i in range(n)]


def _write(directory, elements, fmt=TFRECORD, target=400, groups=("train", "val"), unique=True):
    with test_pipeline() as p:
        files = p | beam.Create(elements) | WriteShards(str(directory), groups, fmt, target, unique)
        assert_that(files | beam.Map(lambda f: (f["group"], f["records"])) | beam.CombinePerKey(sum),
                    equal_to(sorted({(g, sum(e[0] == g for e in elements)) for g in groups})))


def _digests(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_shard_assignment_is_a_pure_function_of_the_key():
    assert num_shards(0, 100) == 1 and num_shards(100, 100) == 1 and num_shards(101, 100) == 2
    assert all(0 <= shard_of(f"k{i}", 7) < 7 for i in range(1000))
    assert shard_of("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", 16) == shard_of(
        "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", 16)


def test_shards_are_byte_identical_across_runs_and_input_order(tmp_path):
    elements = _elements(40)
    _write(tmp_path / "a", elements)
    _write(tmp_path / "b", list(reversed(elements)))
    first = _digests(tmp_path / "a")
    assert first == _digests(tmp_path / "b")
    size = sum(len(e[2]) for e in elements)
    shards = num_shards(size, 400)
    assert shards > 1
    assert sorted(first) == sorted([f"train-{i:05d}-of-{shards:05d}.tfrecord" for i in range(shards)]
                                   + ["val-00000-of-00001.tfrecord"])  # the empty split still has its shard


def test_tfrecords_read_back_with_tensorflow_in_key_order(tmp_path):
    import tensorflow as tf

    elements = _elements(25)
    _write(tmp_path, elements)
    spec = {"i": tf.io.FixedLenFeature([], tf.int64), "name": tf.io.FixedLenFeature([], tf.string)}
    values = []
    for path in sorted(tmp_path.glob("train-*.tfrecord")):
        shard = [int(tf.io.parse_single_example(r, spec)["i"]) for r in tf.data.TFRecordDataset(str(path))]
        assert shard == sorted(shard)  # sorted by key inside a shard
        values.extend(shard)
    assert sorted(values) == list(range(25))
    assert list(tf.data.TFRecordDataset(str(tmp_path / "val-00000-of-00001.tfrecord"))) == []


def test_gzip_shards_are_deterministic_and_readable(tmp_path):
    import tensorflow as tf

    fmt = ShardFormat(".tfrecord.gz", tfrecord.frame, gzip=True)
    _write(tmp_path / "a", _elements(10), fmt, target=10 ** 6)
    _write(tmp_path / "b", _elements(10), fmt, target=10 ** 6)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    path = tmp_path / "a" / "train-00000-of-00001.tfrecord.gz"
    data = path.read_bytes()
    assert data[:2] == b"\x1f\x8b" and data[4:8] == b"\0\0\0\0"  # gzip with mtime 0: no run-dependent bytes
    assert gzip.decompress(data)
    assert len(list(tf.data.TFRecordDataset(str(path), compression_type="GZIP"))) == 10


def test_csv_header_in_every_shard(tmp_path):
    fmt = ShardFormat(".csv", header=b"a,b\n")
    elements = [("manifest", f"k{i:03d}", f"{i},x\n".encode()) for i in range(30)]
    _write(tmp_path, elements, fmt, target=50, groups=("manifest",))
    rows = []
    for path in sorted(tmp_path.glob("manifest-*.csv")):
        lines = path.read_text().splitlines()
        assert lines[0] == "a,b"
        rows.extend(lines[1:])
    assert sorted(rows) == sorted(f"{i},x" for i in range(30))


def test_duplicate_keys_fail_the_job(tmp_path):
    elements = _elements(3) + [("train", "key0001", b"again")]
    with pytest.raises(Exception, match="duplicate record key 'key0001'") as err:
        _write(tmp_path, elements)
    assert isinstance(err.value, DuplicateKeyError) or "DuplicateKeyError" in str(err.value)


def test_example_round_trip_without_tensorflow():
    data = tfrecord.serialize_example({"f": (tfrecord.FLOAT, [1.5, float("nan")]), "b": (tfrecord.BYTES, [b"x"]),
                                       "i": (tfrecord.INT64, [-3, 2 ** 40])})
    parsed = tfrecord.parse_example(data)
    assert parsed["b"] == [b"x"] and parsed["i"] == [-3, 2 ** 40] and parsed["f"][0] == 1.5
    assert parsed["f"][1] != parsed["f"][1]  # NaN survives
