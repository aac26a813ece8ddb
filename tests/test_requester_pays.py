"""Requester-pays reads against a GCS emulator behind a proxy that enforces requester pays like real GCS."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from beam_pipeline.fileio.sources import BeamSource, RequesterPaysError, RequesterPaysSource
from beam_pipeline.run import main, run
from conftest import ONE_WORKER, OFFLINE_TEXT, create_bucket, published, upload_tree
from test_pipeline import scenario

BILLING = "billing-proj"


@pytest.fixture
def rp_bucket(gcs_server, request):
    client, proxy = gcs_server
    name = f"rp-{request.node.name.replace('_', '-')[5:40].lower()}".rstrip("-")
    create_bucket(client, proxy, name)
    proxy.requests.clear()
    return client.bucket(name, user_project=BILLING), proxy  # the test's own uploads are billed too


def test_reads_send_the_billing_project_and_stream(rp_bucket):
    bucket, proxy = rp_bucket
    table = gzip.compress(b"subject_id,stay_id\n" + b"10000032,33258284\n" * 50_000)
    bucket.blob("ed/edstays.csv.gz").upload_from_string(table)
    bucket.blob("files/x.jpg").upload_from_string(b"\xff\xd8jpeg-bytes\xff\xd9")
    source = RequesterPaysSource(BILLING)
    assert source.exists(f"gs://{bucket.name}/ed/edstays.csv.gz") and not source.exists(f"gs://{bucket.name}/nope")
    assert source.read(f"gs://{bucket.name}/files/x.jpg") == b"\xff\xd8jpeg-bytes\xff\xd9"
    with source.open(f"gs://{bucket.name}/ed/edstays.csv.gz") as f:
        chunks = iter(lambda: f.read(64 * 1024), b"")
        assert b"".join(chunks) == table  # streamed in pieces, not one download
    reads = [q for _, path, q in proxy.requests if bucket.name in path]
    assert reads and all(q.get("userProject") == [BILLING] for q in reads)  # every request, none refused
    with pytest.raises(FileNotFoundError):
        source.read(f"gs://{bucket.name}/files/missing.jpg")


def test_reads_without_a_billing_project_fail_with_a_clear_error(rp_bucket):
    bucket, _ = rp_bucket
    bucket.blob("x.csv").upload_from_string(b"a\n")
    with pytest.raises(RequesterPaysError) as err:
        BeamSource().exists(f"gs://{bucket.name}/x.csv")
    message = str(err.value)
    assert f"gs://{bucket.name} is a requester-pays bucket" in message and "--billing_project" in message
    assert "Bucket is a requester pays bucket but no user project provided" in message


def test_transient_errors_are_retried(rp_bucket):
    bucket, proxy = rp_bucket
    bucket.blob("files/y.jpg").upload_from_string(b"payload")
    # The proxy lives for the session: the rules go whatever happens (the unquoted one never matches the JSON API's
    # object paths, so it would stay armed for every later test).
    proxy.inject["files%2Fy.jpg"] = [503, 429]
    proxy.inject["files/y.jpg"] = [503, 429]
    try:
        assert RequesterPaysSource(BILLING).read(f"gs://{bucket.name}/files/y.jpg") == b"payload"
    finally:
        proxy.inject.pop("files%2Fy.jpg", None)
        proxy.inject.pop("files/y.jpg", None)
    attempts = [p for _, p, _ in proxy.requests if "y.jpg" in p]
    assert len(attempts) == 3


def test_whole_pipeline_from_requester_pays_inputs_to_gs_outputs(mini_mimic, tmp_path, gcs_server, rp_bucket):
    """Every input (CSV, CSV.GZ, JPEG) read from a requester-pays bucket, every output written to gs://; the bytes
    equal a local run's. Without a billing project the same run stops with the clear error."""
    client, proxy = gcs_server
    bucket, _ = rp_bucket
    roots = mini_mimic(**scenario())
    triage = Path(roots[1]) / "ed" / "triage.csv.gz"  # one table as plain .csv
    with gzip.open(triage, "rb") as src, open(triage.with_suffix(""), "wb") as dst:
        shutil.copyfileobj(src, dst)
    triage.unlink()
    gs_roots = [upload_tree(client, bucket.name, Path(root), f"in/{Path(root).name}", BILLING) for root in roots]
    create_bucket(client, proxy, "user-outputs")

    def flags(cxr, ed, iv, output, *extra):
        return [f"--mimic_cxr_root={cxr}", f"--mimic_ed_root={ed}", f"--mimic_iv_root={iv}", f"--output={output}",
                OFFLINE_TEXT, ONE_WORKER, *extra]

    local = run(flags(*roots, tmp_path / "local"))
    assert local["inputs"]["triage"]["path"].endswith("triage.csv")
    with pytest.raises(SystemExit, match=f"gs://{bucket.name} is a requester-pays bucket.*--billing_project"):
        main(flags(*gs_roots, "gs://user-outputs/run"))
    remote = run(flags(*gs_roots, "gs://user-outputs/run", f"--billing_project={BILLING}"))
    assert remote["counts"] == local["counts"] and remote["counts"]["matched"] == 4
    assert {k: v["sha256"] for k, v in remote["inputs"].items()} == {k: v["sha256"] for k, v in local["inputs"].items()}
    out = client.bucket("user-outputs")
    folder = remote["config"]["output"][len("gs://user-outputs/"):]
    for name in local["outputs"]["files"]:
        assert out.blob(f"{folder}/{name}").download_as_bytes() == (published(tmp_path / "local") / name).read_bytes(), \
            name
    image_reads = [q for _, path, q in proxy.requests if ".jpg" in path and bucket.name in path]
    assert image_reads and all(q.get("userProject") == [BILLING] for q in image_reads)
