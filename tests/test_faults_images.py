"""Fault suite, images (issue #12 items 3 and 6): each fault put on one image of a fresh copy of the sample tree that
the clean run writes, the job run as users run it, and the outcome asserted: that image is a reject with the exact
reason, it is not in the manifest, the counts add up, and every other record is byte for byte the clean run's.
Missing, empty, random-bytes and half-length images are covered by test_pipeline.py, PNG-as-JPEG and absurd sizes
(1 x 1, 5:1, a header claiming 20,000 x 20,000) by test_pixels.py."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from beam_pipeline import accounting, mimic
from beam_pipeline.fileio import tfrecord
from beam_pipeline.fileio.outputs import WRITTEN, Serialize, _Examples
from beam_pipeline.fileio.sources import BeamSource, RequesterPaysSource
from beam_pipeline.fileio.tfrecord import parse_example, read_records
from beam_pipeline.readers.common import open_run
from beam_pipeline.transforms.examples import to_example
from beam_pipeline.transforms.images import ImageLoader, ImageSettings
from beam_pipeline.transforms.records import Record
import faults
from conftest import create_bucket, permissions_apply, published, without_permission_override
from faults import assert_counts_add_up, fresh_tree, rejects, run_job
from test_pixels import damage_scan, scan_data


def manifest(output: Path) -> dict[str, dict]:
    rows = {}
    for path in sorted((published(output) / "manifest").glob("*.csv")):
        with open(path, newline="") as f:
            rows.update((row["dicom_id"], row) for row in csv.DictReader(f))
    return rows


def examples(output: Path) -> dict[str, bytes]:
    """Every written tf.train.Example, serialised, by dicom_id."""
    return {parse_example(raw)["dicom_id"][0].decode(): raw
            for path in sorted((published(output) / "tfrecords").glob("*.tfrecord")) for raw in read_records(str(path))}


@dataclasses.dataclass(frozen=True)
class Victim:
    dicom_id: str
    relative: str  # the image path under the CXR root
    path: Path  # in the fresh tree


def victim(clean_run, roots, index: int = 0) -> Victim:
    """The ``index``-th image (by dicom_id) that the clean run writes, located under ``roots``."""
    row = manifest(clean_run[0])[sorted(manifest(clean_run[0]))[index]]
    relative = mimic.image_path(int(row["subject_id"]), int(row["study_id"]), row["dicom_id"])
    return Victim(row["dicom_id"], relative, Path(roots.cxr) / relative)


def assert_rejected(clean_run, output: Path, metadata: dict, image: Victim, reason: str) -> str:
    """The image is one reject with ``reason`` and the only change from the clean run; returns its detail."""
    clean_output, clean = clean_run
    rows = [r for r in rejects(output) if r["dicom_id"] == image.dicom_id]
    assert [(r["stage"], r["reason"]) for r in rows] == [("images", reason)]
    assert image.dicom_id not in manifest(output)
    counts, before = metadata["counts"], clean["counts"]
    key = f"images/{reason}"
    assert counts["rejected_by_reason"] == {**before["rejected_by_reason"],
                                            key: before["rejected_by_reason"].get(key, 0) + 1}
    assert (counts["matched"], counts["rejected"]) == (before["matched"] - 1, before["rejected"] + 1)
    assert_counts_add_up(metadata, output)
    expected = examples(clean_output)
    del expected[image.dicom_id]
    assert examples(output) == expected
    return rows[0]["detail"]


def test_a_directory_at_an_image_path_is_a_reject(clean_tree, clean_run, tmp_path):
    """Once an IsADirectoryError in the shard writer that crashed the whole job."""
    roots = fresh_tree(clean_tree, tmp_path)
    image = victim(clean_run, roots)
    image.path.unlink()
    image.path.mkdir()
    metadata = run_job(roots, tmp_path / "out")
    detail = assert_rejected(clean_run, tmp_path / "out", metadata, image, "unreadable_image")
    assert detail == f"{image.relative}: IsADirectoryError: Is a directory"


@permissions_apply
def test_an_image_without_read_permission_is_a_reject(clean_tree, clean_run, tmp_path):
    """A real PermissionError from the kernel: the job runs as users run it (``python -m beam_pipeline.run`` in a
    fresh interpreter), and when the suite runs as root, without root's file-permission override
    (conftest.without_permission_override), so the mode-000 image is unreadable for it as for any other user."""
    roots = fresh_tree(clean_tree, tmp_path)
    image = victim(clean_run, roots, 1)
    image.path.chmod(0)
    command = [sys.executable, "-m", "beam_pipeline.run", *faults.argv(roots, tmp_path / "out")]
    done = subprocess.run(without_permission_override(command), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    _, metadata = open_run(str(tmp_path / "out"))
    detail = assert_rejected(clean_run, tmp_path / "out", metadata, image, "unreadable_image")
    assert detail == f"{image.relative}: PermissionError: Permission denied"


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux's /proc/self/mem")
def test_an_io_error_reading_an_image_is_a_reject(clean_tree, clean_run, tmp_path):
    """A real I/O error, as root too: the image path links to /proc/self/mem, which opens but whose read() fails
    with EIO (address 0 of the reading process is unmapped)."""
    roots = fresh_tree(clean_tree, tmp_path)
    image = victim(clean_run, roots, 2)
    image.path.unlink()
    image.path.symlink_to("/proc/self/mem")
    metadata = run_job(roots, tmp_path / "out")
    detail = assert_rejected(clean_run, tmp_path / "out", metadata, image, "unreadable_image")
    assert detail == f"{image.relative}: OSError: Input/output error"


def test_corrupt_scan_data_is_a_reject(clean_tree, clean_run, tmp_path):
    """64 bytes overwritten in the middle of the entropy-coded data, end-of-image marker intact: OpenCV decodes it
    with only a warning on stderr (these bands were once written into training records); the strict decode
    refuses it."""
    roots = fresh_tree(clean_tree, tmp_path)
    image = victim(clean_run, roots, 3)
    good = image.path.read_bytes()
    image.path.write_bytes(damage_scan(good))
    banded = cv2.imdecode(np.frombuffer(image.path.read_bytes(), np.uint8), cv2.IMREAD_GRAYSCALE)
    assert (np.abs(banded.astype(int) - cv2.imdecode(np.frombuffer(good, np.uint8), cv2.IMREAD_GRAYSCALE)) > 30).any()
    metadata = run_job(roots, tmp_path / "out")
    detail = assert_rejected(clean_run, tmp_path / "out", metadata, image, "corrupt_image")
    assert detail.startswith(f"{image.relative}: Corrupt JPEG data: ")


def test_a_truncated_image_is_a_reject(clean_tree, clean_run, tmp_path):
    """Cut inside the scan data (a partial download or copy): the missing end-of-image marker refuses it before any
    decoding (cut and given an end-of-image marker again, it is corrupt_image: test_pixels.py)."""
    roots = fresh_tree(clean_tree, tmp_path)
    image = victim(clean_run, roots, 4)
    data = image.path.read_bytes()
    cut = data[:sum(scan_data(data)) // 2]
    image.path.write_bytes(cut)
    metadata = run_job(roots, tmp_path / "out")
    detail = assert_rejected(clean_run, tmp_path / "out", metadata, image, "truncated_image")
    assert detail == f"{image.relative}: no end-of-image marker in {len(cut)} bytes"


@pytest.mark.parametrize("source", ["beam", "requester_pays"])
def test_a_storage_error_on_a_gs_image_is_a_reject(source, gcs_server, clean_tree, clean_run):
    """An object that GCS refuses to read (403, not a requester-pays refusal) is a reject, whether read through
    Beam's GCS layer or the billed client; the next image still loads."""
    client, proxy = gcs_server
    bucket = create_bucket(client, proxy, f"faults-{source.replace('_', '-')}")
    good, refused = (victim(clean_run, clean_tree, index) for index in (0, 1))  # uploaded, never changed
    for image in (good, refused):
        bucket.blob(f"cxr/{image.relative}").upload_from_filename(str(image.path))
    quoted = f"cxr%2F{refused.relative.replace('/', '%2F')}"
    proxy.inject[quoted] = [403] * 10  # no retry for a 403: one per request that reaches it
    try:
        reader = BeamSource() if source == "beam" else RequesterPaysSource("billing-proj")
        loader = ImageLoader(f"gs://{bucket.name}/cxr", ImageSettings(32, "pad", "png", 95, False), reader)
        loader.setup()
        record, outputs = loader.load(record_of(refused))
        assert record is None
        [reject] = [o.value for o in outputs if o.tag == accounting.REJECTS]
        assert (reject["reason"], reject["detail"]) == ("unreadable_image",
                                                         f"{refused.relative}: PermissionError: Forbidden 403: injected failure")
        assert loader.load(record_of(good))[0].image is not None
    finally:
        del proxy.inject[quoted]


def record_of(image: Victim) -> Record:
    t = dt.datetime(2150, 1, 1)
    return Record(1, 2, image.dicom_id, 3, "PA", t, t, None, image.relative, None, None, "", "", (), (), (), (), ())


def test_a_record_its_example_cannot_hold_is_an_encode_failed_reject_not_a_failed_job(clean_tree, clean_run):
    """The shard writer's safety net: a value its feature cannot hold (here a stay_id beyond int64, which reading
    now rejects) once failed the whole job after all the image work. The record is a reject, not written, and its
    image's events go with it (they count written images)."""
    image = victim(clean_run, clean_tree, 0)
    writer = _Examples(ImageLoader(clean_tree.cxr, ImageSettings(32, "pad", "png", 95, False)), Serialize(to_example))
    writer.setup()
    good = dataclasses.replace(record_of(image), split="train")
    payload, outputs = writer.render(good, writer.fetch(good))
    assert payload and WRITTEN in {o.tag for o in outputs}
    bad = dataclasses.replace(good, stay_id=2 ** 63)
    payload, outputs = writer.render(bad, writer.fetch(bad))
    assert payload is None and {o.tag for o in outputs} == {accounting.REJECTS, accounting.EVENTS}
    assert [o.value for o in outputs if o.tag == accounting.REJECTS] == [
        {"stage": "images", "reason": "encode_failed", "subject_id": 1, "study_id": 2, "dicom_id": image.dicom_id,
         "detail": f"feature stay_id (int64): ValueError: Value out of range: {2 ** 63}"}]
    assert sorted(o.value for o in outputs if o.tag == accounting.EVENTS) == [
        ("rejected", 1), ("rejects/images/encode_failed", 1)]


def test_a_type_error_names_the_feature_but_not_the_value():
    """A type error's message may quote the value, and a bytes feature may hold a note: the detail names the
    feature only."""
    with pytest.raises(tfrecord.FeatureError, match=r"^feature note/text \(bytes\): TypeError$"):
        tfrecord.serialize_example({"note/text": (tfrecord.BYTES, ["Chief complaint: chest pain"])})
