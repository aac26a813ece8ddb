"""Both readers iterate whole splits of a real pipeline output; TFDS opens it in place. Labels, masks and the
labelled flag read back through both readers equal the CheXpert table of the sample, under --uncertain_policy=ignore."""

from __future__ import annotations

import csv
import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from beam_pipeline import mimic, sample
from beam_pipeline.fileio.tfrecord import parse_example, read_records
from beam_pipeline.readers.common import load_metadata
from beam_pipeline.run import run
from beam_pipeline.transforms.examples import feature_spec
from conftest import ONE_WORKER, OFFLINE_TEXT, published


def expected_targets(raw: list[float] | None) -> tuple[list[int], list[int], int]:
    """(binary, mask, present) from a CheXpert CSV row under --uncertain_policy=ignore, written out by hand: a study
    without a row or with an all-blank row is unlabelled (-1 / 0 everywhere); blank is a valid negative; uncertain
    has no target (-1, mask 0), never 0."""
    if raw is None or all(np.isnan(v) for v in raw):
        return [-1] * 14, [0] * 14, 0
    pairs = [(0, 1) if np.isnan(v) else {1.0: (1, 1), 0.0: (0, 1), -1.0: (-1, 0)}[v] for v in raw]
    return [b for b, _ in pairs], [m for _, m in pairs], 1


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
         f"--output={output}", OFFLINE_TEXT, ONE_WORKER, "--image_size=64", "--target_shard_mb=0.1",
         "--uncertain_policy=ignore"])
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
    images, labels, mask = next(iter(dataset(str(output), "train", supervised=True, channels=1).batch(8)))
    assert images.shape == (8, 64, 64, 1) and labels.shape == mask.shape == (8, 14)
    assert labels.dtype == mask.dtype == tf.float32
    pixels = next(iter(dataset(str(output), "train", normalization="none")))["image"].numpy()
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0  # imagenet-normalised values above are not in [0, 1]


def test_tf_data_labels_and_masks_equal_the_chexpert_table(built):
    """Every record of every split, in both tf.data forms, against the CheXpert CSV rows."""
    from beam_pipeline.readers.tf_data import dataset

    _, output, manifest, raw_labels = built
    states = {"uncertain_masked": 0, "unlabelled": 0, "blank_negative": 0}
    for split in mimic.SPLITS:
        records = list(dataset(str(output), split, normalization="none", channels=1))
        supervised = list(dataset(str(output), split, normalization="none", channels=1, supervised=True))
        assert len(records) == len(supervised) == len(manifest[split])
        for example, (image, labels, mask) in zip(records, supervised):
            raw = raw_labels.get(int(example["study_id"]))
            binary, expected_mask, present = expected_targets(raw)
            assert example["labels/binary"].numpy().tolist() == binary == labels.numpy().tolist()
            assert example["labels/mask"].numpy().tolist() == expected_mask == mask.numpy().tolist()
            assert int(example["labels/present"]) == present
            status = example["labels/status"].numpy().decode()
            assert status == ("no_label_row" if raw is None else "all_blank" if not present else "labeled")
            np.testing.assert_array_equal(image.numpy(), example["image"].numpy())
            states["unlabelled"] += not present
            if present:
                states["uncertain_masked"] += sum(v == -1.0 for v in raw)
                states["blank_negative"] += sum(np.isnan(v) for v in raw)
    assert all(n > 0 for n in states.values()), states  # the sample exercises every case


def test_keras_trains_on_the_supervised_form_with_the_masked_loss(built):
    """(image, labels, mask) is Keras's (x, y, sample_weight): with MaskedBinaryCrossentropy the loss is the mean
    binary cross-entropy over the valid labels only (checked against numpy), and model.fit trains on it."""
    import keras
    import tensorflow as tf

    from beam_pipeline.readers.tf_data import MaskedBinaryCrossentropy, dataset

    _, output, manifest, _ = built
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64, 64, 1)), keras.layers.AveragePooling2D(8), keras.layers.Flatten(),
                              keras.layers.Dense(14)])
    model.compile(optimizer="sgd", loss=MaskedBinaryCrossentropy(from_logits=True),
                  metrics=[keras.metrics.AUC(multi_label=True, num_labels=14, from_logits=True)])
    val = dataset(str(output), "val", channels=1, supervised=True).batch(len(manifest["val"]))  # one batch
    images, labels, mask = next(iter(val))
    logits = model.predict(images, verbose=0)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(tf.maximum(labels, 0.0), logits).numpy()
    expected = (bce * mask.numpy()).sum() / mask.numpy().sum()
    assert (labels.numpy() == -1).any() and model.evaluate(val, verbose=0)[0] == pytest.approx(expected, rel=1e-5)
    history = model.fit(dataset(str(output), "train", channels=1, supervised=True).batch(16), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and history.history["loss"][0] > 0


_READ_WITH_WORKERS = """
import json, sys
from torch.utils.data import DataLoader
from beam_pipeline.readers.pytorch import MimicCxrEdDataset
output, world = sys.argv[1], int(sys.argv[2])
def dicoms(dataset, **loader_args):
    loader = DataLoader(dataset, batch_size=5, collate_fn=dataset.collate, **loader_args)
    return [d for batch in loader for d in batch["dicom_id"]]
print(json.dumps({
    "by_workers": dicoms(MimicCxrEdDataset(output, "train"), num_workers=2),
    "strided": [d for rank in range(world) for d in dicoms(
        MimicCxrEdDataset(output, "train", rank=rank, world_size=world), num_workers=2)],
    "halves": [dicoms(MimicCxrEdDataset(output, "val", rank=r, world_size=2)) for r in (0, 1)],
    "tensorflow_loaded": "tensorflow" in sys.modules}))
"""


def _dicoms(dataset) -> list[str]:
    from torch.utils.data import DataLoader

    return [d for batch in DataLoader(dataset, batch_size=5, collate_fn=dataset.collate) for d in batch["dicom_id"]]


def test_pytorch_reader_splits_work_across_workers_and_processes(built):
    """Batches carry padded ids, masks and the CSV's labels; DataLoader workers and processes each read a share,
    every record exactly once. The worker runs are in a fresh interpreter, as in a training script: DataLoader
    workers are forked, and forking this test process (TensorFlow and gRPC threads loaded by other tests) can abort
    a child in abseil's mutex code, which says nothing about the reader."""
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
    done = subprocess.run([sys.executable, "-c", _READ_WITH_WORKERS, str(output), str(len(train.files))],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    read = json.loads(done.stdout.strip().splitlines()[-1])
    assert not read["tensorflow_loaded"]  # the PyTorch reader stays TensorFlow-free
    # by shard: 2 DataLoader workers, fewer readers than shards
    assert sorted(read["by_workers"]) == sorted(manifest["train"])
    # more readers (one process per shard x 2 workers) than shards: records are strided, still each exactly once
    assert sorted(read["strided"]) == sorted(manifest["train"])
    halves = [set(h) for h in read["halves"]]
    assert not halves[0] & halves[1] and halves[0] | halves[1] == set(manifest["val"])


def test_pytorch_labels_and_masks_equal_the_chexpert_table(built):
    """Every record of every split, as dict batches and as supervised (image, labels, mask) batches, against the
    CheXpert CSV rows; masked_bce_with_logits averages over the valid labels only."""
    import torch
    from torch.utils.data import DataLoader

    from beam_pipeline.readers.pytorch import MimicCxrEdDataset, masked_bce_with_logits

    _, output, manifest, raw_labels = built
    unlabelled = 0
    for split in mimic.SPLITS:
        data = MimicCxrEdDataset(str(output), split, channels=1)
        pairs = zip(DataLoader(data, batch_size=7, collate_fn=data.collate),
                    DataLoader(MimicCxrEdDataset(str(output), split, channels=1, supervised=True), batch_size=7))
        seen = 0
        for batch, (images, labels, mask) in pairs:
            assert torch.equal(images, batch["image"]) and labels.dtype == mask.dtype == torch.float32
            for i, study in enumerate(batch["study_id"].tolist()):
                binary, expected_mask, present = expected_targets(raw_labels.get(study))
                assert batch["labels"][i].tolist() == binary == labels[i].tolist()
                assert batch["mask"][i].tolist() == expected_mask == mask[i].tolist()
                assert int(batch["labels_present"][i]) == present and batch["after_ed_departure"][i] in (0, 1)
                unlabelled += not present
                seen += 1
        assert seen == len(manifest[split])
    assert unlabelled
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    labels, mask = torch.tensor([[1.0, -1.0, 0.0], [-1.0, -1.0, 1.0]]), torch.tensor([[1.0, 0, 1], [0, 0, 1]])
    valid = mask.bool()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[valid], labels[valid])
    assert torch.isclose(masked_bce_with_logits(logits, labels, mask), expected)
    assert masked_bce_with_logits(logits, labels, torch.zeros_like(mask)) == 0


def test_tensorflow_datasets_opens_the_output_in_place(built):
    import tensorflow_datasets as tfds

    _, output, manifest, _ = built
    builder = tfds.builder_from_directory(str(published(output) / "tfrecords"))
    for split in mimic.SPLITS:
        assert builder.info.splits[split].num_examples == len(manifest[split])
    examples = list(builder.as_dataset(split="val"))
    assert {e["dicom_id"].numpy().decode() for e in examples} == set(manifest["val"])
    assert examples[0]["image/encoded"].shape == (64, 64, 1) and examples[0]["image/encoded"].dtype.name == "uint8"


@pytest.fixture(scope="module")
def gzip_jpeg(built, tmp_path_factory):
    """(output, metadata) of the same sample written gzipped, as JPEG, with edge maps."""
    roots = built[0]
    output = tmp_path_factory.mktemp("gzip-jpeg") / "out"
    metadata = run([f"--mimic_cxr_root={roots.cxr}", f"--mimic_ed_root={roots.ed}", f"--output={output}",
                    OFFLINE_TEXT, ONE_WORKER,
                    "--image_size=32", "--compression=gzip", "--image_format=jpeg", "--edge_map"])
    return output, metadata


def test_gzip_output_reads_back(built, gzip_jpeg):
    from beam_pipeline.readers.pytorch import MimicCxrEdDataset
    from beam_pipeline.readers.tf_data import dataset

    manifest = built[2]
    output, metadata = gzip_jpeg
    assert not (published(output) / "tfrecords" / "features.json").exists()  # TFDS reads uncompressed only
    assert sorted(_dicoms(MimicCxrEdDataset(str(output), "test"))) == sorted(manifest["test"])
    examples = list(dataset(str(output), "test", channels=1))
    assert len(examples) == metadata["counts"]["per_split"]["test"] == len(manifest["test"])
    assert examples[0]["image"].shape == (32, 32, 1) and examples[0]["image/format"].numpy() == b"jpeg"
    assert examples[0]["image/edge_map"].numpy()[:4] == b"\x89PNG"
    for split in mimic.SPLITS:  # metadata.json gives the gzip files' sizes, not the uncompressed records'
        shards = (published(output) / "tfrecords").glob(f"{split}-*.tfrecord.gz")
        assert metadata["outputs"]["tfrecords"][split]["bytes"] == sum(path.stat().st_size for path in shards)


@pytest.mark.parametrize("normalization", ["none", "imagenet"])
def test_both_readers_give_the_same_pixels_of_a_jpeg_output(gzip_jpeg, normalization):
    """tf.data decodes JPEG with the accurate DCT, as cv2 (the PyTorch reader) does: TF's default fast DCT put 17
    grey levels between the two readers' pixels on these 32 px images (up to 4 at 518 px, on half the pixels)."""
    from beam_pipeline.readers.pytorch import MimicCxrEdDataset
    from beam_pipeline.readers.tf_data import dataset

    output = str(gzip_jpeg[0])
    for split in mimic.SPLITS:
        by_tf = {e["dicom_id"].numpy().decode(): e["image"].numpy().transpose(2, 0, 1)
                 for e in dataset(output, split, normalization=normalization)}
        by_torch = {s["dicom_id"]: s["image"].numpy() for s in MimicCxrEdDataset(output, split,
                                                                                  normalization=normalization)}
        assert by_tf.keys() == by_torch.keys() and by_tf
        for dicom_id, image in by_tf.items():
            np.testing.assert_allclose(image, by_torch[dicom_id], rtol=0, atol=1e-6, err_msg=dicom_id)


DATETIME = re.compile(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{6})?")  # mimic.format_datetime's spelling


def test_feature_descriptions_say_what_the_records_hold(built):
    """Every datetime feature's description gives the format with the fraction its values can have (StudyTime's:
    strptime('%Y-%m-%d %H:%M:%S') after the old description failed on most study_datetime values), and rag/scores
    are cosine similarities to rag/query, the text retrieval embedded, not to the note."""
    _, output, _, _ = built
    metadata = load_metadata(str(output))
    folder = published(output) / "tfrecords"
    records = [parse_example(raw) for path in sorted(folder.glob("*.tfrecord")) for raw in read_records(str(path))]
    datetimes = {name for r in records for name, values in r.items()
                 if values and isinstance(values[0], bytes) and DATETIME.fullmatch(values[0])}
    described = {name for name, f in metadata["features"].items()
                 if "YYYY-MM-DD HH:MM:SS[.ffffff]" in f["description"]}
    assert "study_datetime" in datetimes <= described
    assert any(b"." in r["study_datetime"][0] for r in records)  # the sample's StudyTimes have fractions
    assert "similarity of each retrieved passage to rag/query" in feature_spec(True, False, 3)["rag/scores"][2]
