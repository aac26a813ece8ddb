"""Requester-pays reads against a GCS emulator behind a proxy that enforces requester pays like real GCS, and what
each kind of storage failure becomes: a reject (this object), a stopped job naming the flag (the billing), or a
failed bundle the runner retries (storage unavailable)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import random
import re
import shutil
from pathlib import Path

import apache_beam as beam
import pytest

from beam_pipeline import accounting, mimic
from beam_pipeline.cohorts.cxr_report import ReadReports
from beam_pipeline.fileio import sources
from beam_pipeline.fileio.csv_tables import InputError, ReadCsvRows
from beam_pipeline.fileio.sources import BeamSource, RequesterPaysError, RequesterPaysSource, StorageUnavailableError
from beam_pipeline.run import main, run
from beam_pipeline.transforms.images import ImageLoader, ImageSettings
from conftest import create_bucket, published, upload_tree
from test_cxr_report import REPORT, study
from test_faults_images import Victim, record_of
from test_pipeline import argv, scenario

BILLING = "billing-proj"
NO_ACCESS = ("runner@p.iam.gserviceaccount.com does not have storage.objects.get access to the Google Cloud Storage "
             "object. Permission 'storage.objects.get' denied on resource (or it may not exist).")


@pytest.fixture
def rp_bucket(gcs_server, request):
    client, proxy = gcs_server
    name = "rp-" + re.sub("[^a-z0-9]+", "-", request.node.name[5:].lower())[:35].strip("-")
    create_bucket(client, proxy, name)
    proxy.requests.clear()
    proxy.media_reads.clear()
    return client.bucket(name, user_project=BILLING), proxy  # the test's own uploads are billed too


@pytest.fixture
def fast_retries(monkeypatch):
    """The client's backoff from 10 ms with a 0.5 s deadline (300 s in a job): an outage outlasts it at once."""
    monkeypatch.setattr(sources, "RETRY_FIRST_DELAY_SECONDS", 0.01)
    monkeypatch.setattr(sources, "RETRY_DEADLINE_SECONDS", 0.5)


@contextlib.contextmanager
def injected(proxy, fragment: str, answers: list):
    """The proxy gives ``answers`` (statuses, or (status, GCS's message)) to requests whose path holds
    ``fragment``: a bucket name, or part of an object name (its slashes quoted here, as the JSON API sends them). The
    rule goes whatever happens, as the proxy lives for the session."""
    fragment = fragment.replace("/", "%2F")
    proxy.inject[fragment] = list(answers)
    try:
        yield
    finally:
        proxy.inject.pop(fragment, None)


def incompressible(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def test_reads_send_the_billing_project_and_stream(rp_bucket, monkeypatch):
    """A table is streamed in ranged reads (several here: 64 KiB pieces of a 300 KB object), every request billed,
    and the bytes are the object's."""
    bucket, proxy = rp_bucket
    monkeypatch.setattr(sources, "READ_CHUNK", 64 * 1024)
    table = incompressible(300_000)
    bucket.blob("ed/edstays.csv.gz").upload_from_string(table)
    bucket.blob("files/x.jpg").upload_from_string(b"\xff\xd8jpeg-bytes\xff\xd9")
    source = RequesterPaysSource(BILLING)
    assert source.exists(f"gs://{bucket.name}/ed/edstays.csv.gz") and not source.exists(f"gs://{bucket.name}/nope")
    assert source.read(f"gs://{bucket.name}/files/x.jpg") == b"\xff\xd8jpeg-bytes\xff\xd9"
    with source.open(f"gs://{bucket.name}/ed/edstays.csv.gz") as f:
        streamed = hashlib.sha256(b"".join(iter(lambda: f.read(16 * 1024), b"")))
    assert streamed.hexdigest() == hashlib.sha256(table).hexdigest()
    ranges = [r for path, r in proxy.media_reads if "edstays" in path]
    assert len(ranges) >= 300_000 // (64 * 1024) and all(r.startswith("bytes=") for r in ranges), ranges
    reads = [q for _, path, q in proxy.requests if bucket.name in path]
    assert reads and all(q.get("userProject") == [BILLING] for q in reads)  # every request, none refused
    with pytest.raises(FileNotFoundError):
        source.read(f"gs://{bucket.name}/files/missing.jpg")


@pytest.mark.parametrize("source", [BeamSource(), RequesterPaysSource(BILLING)], ids=["beam", "billed"])
def test_an_object_stored_gzip_encoded_is_read_as_stored(source, gcs_server, monkeypatch):
    """An object with Content-Encoding: gzip (GCS then serves its stored bytes with that header) is read as stored,
    whole and in ranged pieces: decompressed in transit, a .csv.gz would not be gzip any more and its recorded
    sha256 would not be the object's."""
    client, proxy = gcs_server
    monkeypatch.setattr(sources, "READ_CHUNK", 64 * 1024)
    bucket = create_bucket(client, proxy, "gzip-encoded")
    stored = gzip.compress(incompressible(200_000))
    blob = bucket.blob("ed/triage.csv.gz")
    blob.content_encoding = "gzip"
    blob.upload_from_string(stored)
    proxy.content_encoding["ed%2Ftriage.csv.gz"] = "gzip"
    try:
        assert source.read(f"gs://{bucket.name}/ed/triage.csv.gz") == stored
        with source.open(f"gs://{bucket.name}/ed/triage.csv.gz") as f:
            assert b"".join(iter(lambda: f.read(16 * 1024), b"")) == stored
    finally:
        proxy.content_encoding.clear()


def test_reads_without_a_billing_project_fail_with_a_clear_error(rp_bucket):
    bucket, _ = rp_bucket
    bucket.blob("x.csv").upload_from_string(b"a\n")
    with pytest.raises(RequesterPaysError) as err:
        BeamSource().exists(f"gs://{bucket.name}/x.csv")
    message = str(err.value)
    assert f"gs://{bucket.name} is a requester-pays bucket" in message and "--billing_project" in message
    assert "Bucket is a requester pays bucket but no user project provided" in message


@pytest.mark.parametrize("answer", [
    (400, "User project specified in the request is invalid."),
    (403, "The billing account for the owning project is disabled in state absent"),
    (403, NO_ACCESS)], ids=["typo", "billing-disabled", "no-access"])
def test_a_refused_billing_project_stops_the_launch_naming_the_flag_and_the_reason(answer, rp_bucket, tmp_path):
    """The launch's first billed request (the existence check of a table) refused for any reason: the CLI prints
    one line naming --billing_project and GCS's reason, not a traceback."""
    bucket, proxy = rp_bucket
    roots = tuple(f"gs://{bucket.name}/{root}" for root in ("cxr", "ed", "iv"))
    with injected(proxy, bucket.name, [answer]), pytest.raises(SystemExit) as stopped:
        main(argv(roots, tmp_path / "out", "--billing_project=typo-proj"))
    message = str(stopped.value.code)
    assert message.startswith(f"error: gs://{bucket.name} refused the ") and "\n" not in message
    assert "--billing_project=typo-proj" in message and answer[1][:150] in message


def test_storage_unavailable_at_launch_stops_it_with_a_clear_message(rp_bucket, tmp_path, fast_retries):
    bucket, proxy = rp_bucket
    roots = tuple(f"gs://{bucket.name}/{root}" for root in ("cxr", "ed", "iv"))
    with injected(proxy, bucket.name, [503] * 1000), pytest.raises(SystemExit) as stopped:
        main(argv(roots, tmp_path / "out", f"--billing_project={BILLING}"))
    assert str(stopped.value.code).startswith(f"error: gs://{bucket.name}/")
    assert "storage unavailable after retrying for up to 0.5 s" in str(stopped.value.code)


def test_transient_errors_are_retried(rp_bucket, fast_retries):
    bucket, proxy = rp_bucket
    bucket.blob("files/y.jpg").upload_from_string(b"payload")
    with injected(proxy, "files/y.jpg", [503, 429]):
        assert RequesterPaysSource(BILLING).read(f"gs://{bucket.name}/files/y.jpg") == b"payload"
    attempts = [p for _, p, _ in proxy.requests if "y.jpg" in p]
    assert len(attempts) == 3


@pytest.mark.parametrize("billed", [False, True], ids=["beam", "billed"])
def test_an_image_read_is_a_reject_only_when_the_object_is_at_fault(billed, gcs_server, fast_retries):
    """Missing (404) and refused (403, with GCS's reason) images are rejects and the job goes on; storage failing
    past the retries (503 after 503) is not the image's fault: the read raises, so the bundle fails and the runner
    retries it, rather than the run being published without the image."""
    client, proxy = gcs_server
    bucket = create_bucket(client, proxy, f"image-faults-{'billed' if billed else 'beam'}")
    image = Victim("d1", "files/p10/p10000032/s50000001/d1.jpg", Path())
    bucket.blob(f"cxr/{image.relative}").upload_from_string(b"\xff\xd8not-decoded\xff\xd9")
    source = RequesterPaysSource(BILLING) if billed else BeamSource()
    loader = ImageLoader(f"gs://{bucket.name}/cxr", ImageSettings(32, "pad", "png", 95, False), source)
    loader.setup()

    def rejected(answers) -> tuple[str, str]:
        with injected(proxy, image.relative, answers):
            record, outputs = loader.load(record_of(image))
        assert record is None
        [reject] = [o.value for o in outputs if o.tag == accounting.REJECTS]
        return reject["reason"], reject["detail"]

    assert rejected([404]) == ("missing_image", f"no file at {image.relative}")
    assert rejected([(403, NO_ACCESS)]) == (
        "unreadable_image", f"{image.relative}: PermissionError: Forbidden 403: {NO_ACCESS[:200]}")
    with injected(proxy, image.relative, [503] * 1000), pytest.raises(StorageUnavailableError) as outage:
        loader.load(record_of(image))
    assert str(outage.value).startswith(f"gs://{bucket.name}/cxr/{image.relative}: storage unavailable after ")
    assert "503" in str(outage.value) and not isinstance(outage.value, OSError)


def test_a_refusal_in_the_middle_of_a_streamed_table_names_the_file(rp_bucket, monkeypatch):
    """The ranged reads of a table happen while it is parsed, after open(): a 403 on the second one is the same
    clean error, naming the file and GCS's reason, as a refusal of the first."""
    bucket, proxy = rp_bucket
    monkeypatch.setattr(sources, "READ_CHUNK", 64 * 1024)  # the reader asks for 1 MiB at a time
    table = mimic.Table(name="t", module="ed", subdir="ed", basename="t", header=("subject_id", "stay_id"),
                        types={"subject_id": mimic.INT, "stay_id": mimic.INT})
    bucket.blob("ed/t.csv").upload_from_string(
        b"subject_id,stay_id\n" + b"".join(b"%d,%d\n" % (10000000 + i, i) for i in range(100_000)))  # > 1 MiB
    path = f"gs://{bucket.name}/ed/t.csv"
    rows = ReadCsvRows(table, RequesterPaysSource(BILLING)).process(path)
    first = next(rows)  # the first ranged read (1 MiB) is parsed: refuse the next one
    assert not isinstance(first, beam.pvalue.TaggedOutput)
    with injected(proxy, "ed/t.csv", [(403, NO_ACCESS)]), pytest.raises(InputError) as refused:
        list(rows)
    assert str(refused.value).startswith(f"{path}: cannot be read after ")
    assert f"Forbidden 403: {NO_ACCESS[:100]}" in str(refused.value)


def test_images_without_a_billing_project_take_one_request_each(gcs_server, monkeypatch):
    """Through Beam's client, made once per process: Beam's FileSystems made a new client (and connection) and a
    metadata lookup for every image."""
    from google.cloud import storage

    client, proxy = gcs_server
    bucket = create_bucket(client, proxy, "own-images")
    for n in range(5):
        bucket.blob(f"files/{n}.jpg").upload_from_string(bytes([n]) * 100)
    source = BeamSource()
    source.read("gs://own-images/files/0.jpg")  # the first read in the process may make the client
    made, make = [], storage.Client.__init__
    monkeypatch.setattr(storage.Client, "__init__", lambda *args, **kwargs: made.append(make(*args, **kwargs)))
    proxy.requests.clear()
    assert [source.read(f"gs://own-images/files/{n}.jpg") for n in range(5)] == [bytes([n]) * 100 for n in range(5)]
    object_requests = [query for _, path, query in proxy.requests if "/own-images/o/" in path]
    assert not made and len(object_requests) == 5 and all(q.get("alt") == ["media"] for q in object_requests)


def test_whole_pipeline_from_requester_pays_inputs_to_gs_outputs(mini_mimic, tmp_path, gcs_server, rp_bucket,
                                                                 fast_retries):
    """Every input (CSV, CSV.GZ, JPEG) read from a requester-pays bucket, every output written to gs://; the bytes
    equal a local run's. Without a billing project the same run stops with the clear error; with storage failing
    past the retries on the images it stops too, naming the image, and publishes nothing."""
    client, proxy = gcs_server
    bucket, _ = rp_bucket
    roots = mini_mimic(**scenario())
    triage = Path(roots[1]) / "ed" / "triage.csv.gz"  # one table as plain .csv
    with gzip.open(triage, "rb") as src, open(triage.with_suffix(""), "wb") as dst:
        shutil.copyfileobj(src, dst)
    triage.unlink()
    gs_roots = [upload_tree(client, bucket.name, Path(root), f"in/{Path(root).name}", BILLING) for root in roots]
    create_bucket(client, proxy, "user-outputs")

    local = run(argv(roots, tmp_path / "local"))
    assert local["inputs"]["triage"]["path"].endswith("triage.csv")
    with pytest.raises(SystemExit, match=f"gs://{bucket.name} is a requester-pays bucket.*--billing_project"):
        main(argv(gs_roots, "gs://user-outputs/run"))
    remote = run(argv(gs_roots, "gs://user-outputs/run", f"--billing_project={BILLING}"))
    assert remote["counts"] == local["counts"] and remote["counts"]["matched"] == 4
    assert {k: v["sha256"] for k, v in remote["inputs"].items()} == \
        {k: v["sha256"] for k, v in local["inputs"].items()}
    out = client.bucket("user-outputs")
    folder = remote["config"]["output"][len("gs://user-outputs/"):]
    for name in local["outputs"]["files"]:
        expected = (published(tmp_path / "local") / name).read_bytes()
        assert out.blob(f"{folder}/{name}").download_as_bytes() == expected, name
    image_reads = [q for _, path, q in proxy.requests if ".jpg" in path and bucket.name in path]
    assert image_reads and all(q.get("userProject") == [BILLING] for q in image_reads)

    with injected(proxy, "in/cxr/files/", [503] * 1000), pytest.raises(SystemExit) as stopped:
        main(argv(gs_roots, "gs://user-outputs/outage", f"--billing_project={BILLING}"))
    assert str(stopped.value.code).startswith(f"error: {gs_roots[0]}/files/")
    assert ".jpg: storage unavailable after retrying" in str(stopped.value.code)
    assert not out.blob("outage/LATEST").exists()


def test_a_download_whose_checksum_does_not_match_is_storage_failing_not_a_bad_object():
    """The client does not retry a checksum mismatch; the object is not at fault, so the bundle is retried (as for
    an outage) instead of the image becoming an unreadable_image reject."""
    from google.cloud.storage.exceptions import DataCorruption

    def failing(err):
        def action():
            raise err
        return action

    source, path = RequesterPaysSource("p"), "gs://b/files/a.jpg"
    with pytest.raises(StorageUnavailableError, match=path):
        source._call(path, failing(DataCorruption(None, "Checksum mismatch while downloading")))
    with pytest.raises(FileNotFoundError):  # a permanent answer stays the object's
        source._call(path, failing(sources.api_errors.NotFound("no such object")))


def test_a_report_in_a_gs_folder_is_one_billed_read_and_a_refused_one_is_its_studys_reject(gcs_server):
    """Reports in a gs:// folder: each is one billed read (no existence check first, whose refusal would stop the
    job with billing advice); a missing report is missing_report, a refused one unreadable_report with GCS's
    reason, and the job goes on."""
    client, proxy = gcs_server
    bucket = create_bucket(client, proxy, "reports-billed")
    present, missing, refused = study(10000001, 50000001), study(10000002, 50000002), study(10000003, 50000003)
    for record in (present, refused):
        bucket.blob(f"reports/{mimic.report_path(record.subject_id, record.study_id)}").upload_from_string(REPORT)
    reader = ReadReports(f"gs://{bucket.name}/reports", RequesterPaysSource(BILLING), 1, 100)
    reader.setup()
    before = len(proxy.requests)
    [written] = list(reader.process(present))
    assert written.target.startswith("The lungs are clear.") and len(proxy.requests) - before == 1

    def rejected(record):
        return [(o.value["reason"], o.value["detail"]) for o in reader.process(record)
                if getattr(o, "tag", None) == accounting.REJECTS]

    assert [reason for reason, _ in rejected(missing)] == ["missing_report"]
    with injected(proxy, mimic.report_path(refused.subject_id, refused.study_id), [(403, NO_ACCESS)]):
        [(reason, detail)] = rejected(refused)
    assert reason == "unreadable_report" and "Forbidden 403" in detail
