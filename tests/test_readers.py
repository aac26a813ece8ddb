"""Both readers iterate whole splits of a real pipeline output; TFDS opens it in place."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest

from beam_pipeline import mimic, sample
from beam_pipeline.readers.common import load_metadata
from beam_pipeline.run import run
from conftest import ONE_WORKER, OFFLINE_TEXT, published


def manifest_by_split(output: Path) -> dict[str, dict[str, dict]]:
    rows = [r for p in sorted((published(output) / "manifest").glob("*.csv")) for r in csv.DictReader(p.open(newline=""))]
    return {split: {r["dicom_id"]: r for r in rows if r["split"] == split} for split in mimic.SPLITS}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small run with several shards per split, so readers can split work by shard."""
    base = tmp_path_factory.mktemp("readers")
    roots = sample.generate(base / "sample", subjects=40, seed=5)
    output = base / "out"
    run([f"--mimic_cxr_root={roots.cxr}", f"--mimic_ed_root={roots.ed}", f"--mimic_iv_root={roots.iv}",
         f"--output={output}", OFFLINE_TEXT, ONE_WORKER, "--image_size=64", "--target_shard_mb=0.1"])
    with gzip.open(Path(roots.cxr) / mimic.CXR_CHEXPERT.filename, "rt", newline="") as f:
        raw_labels = {int(r["study_id"]): [float(r[k]) if r[k] else np.nan for k in mimic.LABELS]
                      for r in csv.DictReader(f)}
    return roots, output, manifest_by_split(output), raw_labels


def test_tf_data_reader_iterates_every_split(built):
    import tensorflow as tf

    from beam_pipeline.readers.tf_data import dataset

    _, output, manifest, raw_labels = built
    assert load_metadata(str(output))["outputs"]["tfrecords"]["train"]["shards"] >= 4
    for split in mimic.SPLITS:
        seen = {}
        for example in dataset(str(output), split, normalization="imagenet"):
            assert example["image"].shape == (64, 64, 3) and example["image"].dtype == tf.float32
            seen[example["dicom_id"].numpy().decode()] = example
        assert set(seen) == set(manifest[split]) and seen
        for dicom_id, example in seen.items():
            row = manifest[split][dicom_id]
            assert int(example["study_id"]) == int(row["study_id"]) and int(example["stay_id"]) == int(row["stay_id"])
            np.testing.assert_array_equal(example["labels/chexpert"].numpy(), raw_labels.get(
                int(row["study_id"]), [np.nan] * 14))
    images, labels = next(iter(dataset(str(output), "train", supervised=True, channels=1).batch(8)))
    assert images.shape == (8, 64, 64, 1) and labels.shape == (8, 14) and labels.dtype == tf.float32
    pixels = next(iter(dataset(str(output), "train", normalization="none")))["image"].numpy()
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0  # imagenet-normalised values above are not in [0, 1]


def _dicoms(dataset, **loader_args) -> list[str]:
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=5, collate_fn=dataset.collate, **loader_args)
    return [d for batch in loader for d in batch["dicom_id"]]


def test_pytorch_reader_splits_work_across_workers_and_processes(built):
    import torch

    from beam_pipeline.readers.pytorch import MimicCxrEdDataset

    _, output, manifest, raw_labels = built
    train = MimicCxrEdDataset(str(output), "train", normalization="clip")
    assert len(train) == len(manifest["train"]) and len(train.files) >= 4
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=4, collate_fn=train.collate)))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["image"].dtype == torch.float32
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].dtype == torch.long
    assert lengths.max() == batch["input_ids"].shape[1] and (batch["input_ids"][:, 0] == 101).all()  # [CLS]
    assert all(batch["input_ids"][i, n:].eq(0).all() for i, n in enumerate(lengths.tolist()))  # BERT pad id
    assert batch["labels"].shape == (4, 14) and batch["mask"].dtype == torch.float32
    for i, dicom_id in enumerate(batch["dicom_id"]):
        study = int(manifest["train"][dicom_id]["study_id"])
        assert int(batch["study_id"][i]) == study
        np.testing.assert_array_equal(batch["labels_raw"][i].numpy(),
                                      np.asarray(raw_labels.get(study, [np.nan] * 14), np.float32))
    # by shard: 2 DataLoader workers, fewer readers than shards
    by_workers = _dicoms(train, num_workers=2)
    assert sorted(by_workers) == sorted(manifest["train"])
    # more readers (4 processes x 2 workers) than shards: records are strided, still each exactly once
    strided = [d for rank in range(4) for d in _dicoms(
        MimicCxrEdDataset(str(output), "train", rank=rank, world_size=4), num_workers=2)]
    assert len(train.files) < 8 and sorted(strided) == sorted(manifest["train"])
    halves = [set(_dicoms(MimicCxrEdDataset(str(output), "val", rank=r, world_size=2))) for r in (0, 1)]
    assert not halves[0] & halves[1] and halves[0] | halves[1] == set(manifest["val"])


def test_tensorflow_datasets_opens_the_output_in_place(built):
    import tensorflow_datasets as tfds

    _, output, manifest, _ = built
    builder = tfds.builder_from_directory(str(published(output) / "tfrecords"))
    for split in mimic.SPLITS:
        assert builder.info.splits[split].num_examples == len(manifest[split])
    examples = list(builder.as_dataset(split="val"))
    assert {e["dicom_id"].numpy().decode() for e in examples} == set(manifest["val"])
    assert examples[0]["image/encoded"].shape == (64, 64, 1) and examples[0]["image/encoded"].dtype.name == "uint8"


def test_gzip_output_reads_back(built, tmp_path):
    from beam_pipeline.readers.pytorch import MimicCxrEdDataset
    from beam_pipeline.readers.tf_data import dataset

    roots, _, manifest, _ = built
    metadata = run([f"--mimic_cxr_root={roots.cxr}", f"--mimic_ed_root={roots.ed}", f"--output={tmp_path}",
                    OFFLINE_TEXT, ONE_WORKER,
                    "--image_size=32", "--compression=gzip", "--image_format=jpeg", "--edge_map"])
    assert not (published(tmp_path) / "tfrecords" / "features.json").exists()  # TFDS reads uncompressed only
    assert sorted(_dicoms(MimicCxrEdDataset(str(tmp_path), "test"))) == sorted(manifest["test"])
    examples = list(dataset(str(tmp_path), "test", channels=1))
    assert len(examples) == metadata["counts"]["per_split"]["test"] == len(manifest["test"])
    assert examples[0]["image"].shape == (32, 32, 1) and examples[0]["image/format"].numpy() == b"jpeg"
    assert examples[0]["image/edge_map"].numpy()[:4] == b"\x89PNG"
