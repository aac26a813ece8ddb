"""The TFDS files (beam_pipeline/fileio/tfds_metadata.py) that let tfds.builder_from_directory open the shards: every
split they list can be read, including when a small run leaves a split empty."""

from __future__ import annotations

import json

from beam_pipeline.fileio import tfds_metadata
from beam_pipeline.fileio.tfrecord import BYTES, INT64, frame, serialize_example
from beam_pipeline.transforms.examples import feature_spec_json

SPEC = feature_spec_json({"dicom_id": (BYTES, (), "the key"), "labels/mask": (INT64, (2,), "validity")})


def write_split(folder, split: str, shards: list[list[bytes]]) -> list[dict]:
    """Shards named as the pipeline names them; their file records as WriteExamples reports them."""
    files = []
    for shard, records in enumerate(shards):
        data = b"".join(frame(r) for r in records)
        path = folder / f"{split}-{shard:05d}-of-{len(shards):05d}.tfrecord"
        path.write_bytes(data)
        files.append({"group": split, "path": str(path), "shard": shard, "records": len(records), "bytes": len(data)})
    return files


def record(dicom_id: str) -> bytes:
    return serialize_example({"dicom_id": (BYTES, [dicom_id.encode()]), "labels/mask": (INT64, [1, 0])})


def test_tfds_reads_every_split_listed_and_empty_splits_are_not_listed(tmp_path):
    """A run with records in train only (val and test each an empty shard, as a tiny run writes them; one train
    shard empty too, as image rejects can leave it): TFDS failed on a split listed with 0 records ("corresponds to
    no data"), so such a split is left out; an empty shard of a non-empty split is fine."""
    import tensorflow_datasets as tfds

    files = (write_split(tmp_path, "train", [[record("a"), record("b")], [], [record("c")]])
             + write_split(tmp_path, "val", [[]]) + write_split(tmp_path, "test", [[]]))
    (tmp_path / "features.json").write_text(json.dumps(tfds_metadata.features_json(SPEC, 32, "png")))
    info = tfds_metadata.dataset_info_json(files, "test data")
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    assert [s["name"] for s in info["splits"]] == ["train"] and info["splits"][0]["shardLengths"] == ["2", "0", "1"]
    builder = tfds.builder_from_directory(str(tmp_path))
    assert {name: split.num_examples for name, split in builder.info.splits.items()} == {"train": 3}
    for name, split in builder.info.splits.items():
        assert len(list(builder.as_dataset(split=name))) == split.num_examples
    read = list(builder.as_dataset(split="train"))
    assert sorted(e["dicom_id"].numpy() for e in read) == [b"a", b"b", b"c"]
    assert read[0]["labels/mask"].numpy().tolist() == [1, 0]
