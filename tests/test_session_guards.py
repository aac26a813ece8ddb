"""The session-wide safety nets of tests/conftest.py work where the jobs run: the loopback-only network guard is in
force in module fixtures, in child Python processes started the way the suite starts jobs and in Beam's worker
processes, while loopback keeps working; children get the session's home folder, not the user's; and the helper that
takes root's file-permission override away really makes a mode-000 file unreadable.

Every refused attempt targets 192.0.2.1 (TEST-NET-1, RFC 5737: never routed), by number, so not even a DNS query
leaves the machine if a guard were missing. The deliberate attempts are logged to the test's own file, not the
session's log (which must stay empty)."""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import NETWORK_LOG_ENV, SITE, permissions_apply, without_permission_override

TEST_NET = "192.0.2.1"

CHILD = """
import json, os, socket, sys
results = {"pid": os.getpid(), "guard": getattr(socket, "_mimic_test_guard", False),
           "sitecustomize": getattr(sys.modules.get("sitecustomize"), "__file__", None),
           "home": os.path.expanduser("~")}

def attempt(name, call):
    try:
        results[name] = "allowed: %r" % (call(),)
    except OSError as err:
        results[name] = "refused: %s" % err

def connect(family=socket.AF_INET, ex=False):
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        return (s.connect_ex if ex else s.connect)((sys.argv[2], 9))

attempt("connect", connect)
attempt("connect_ex", lambda: connect(ex=True))
attempt("create_connection", lambda: socket.create_connection((sys.argv[2], 9), timeout=3).close())
attempt("getaddrinfo", lambda: socket.getaddrinfo(sys.argv[2], 443))
attempt("gethostbyname", lambda: socket.gethostbyname(sys.argv[2]))
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10) as loopback:
    loopback.sendall(b"ping")
results["localhost"] = sorted({info[4][0] for info in socket.getaddrinfo("localhost", 80, socket.AF_INET)})
print(json.dumps(results))
"""

REFUSED = ("connect", "connect_ex", "create_connection", "getaddrinfo", "gethostbyname")


def test_a_child_started_as_the_suite_starts_jobs_cannot_reach_beyond_loopback(tmp_path):
    """The child inherits os.environ as faults.run_cli and the other job-starting tests pass it (nothing added but the
    log): sitecustomize guards it, every kind of attempt at 192.0.2.1 is refused and logged with its pid, and a
    connection to a loopback server still goes through."""
    assert SITE.as_posix() in os.environ["PYTHONPATH"].split(os.pathsep)
    log = tmp_path / "attempts.log"
    log.touch()
    with socket.create_server(("127.0.0.1", 0)) as server:
        done = subprocess.run([sys.executable, "-c", CHILD, str(server.getsockname()[1]), TEST_NET],
                              env={**os.environ, "HF_HUB_OFFLINE": "1", NETWORK_LOG_ENV: str(log)},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        server.settimeout(10)
        connection, _ = server.accept()
        with connection:
            assert connection.recv(4) == b"ping"  # loopback works: the child connected and sent
    results = json.loads(done.stdout)
    assert results["guard"] is True and results["sitecustomize"] == str(SITE / "sitecustomize.py")
    for name in REFUSED:
        assert results[name].startswith("refused: ") and "network beyond loopback is blocked" in results[name], \
            (name, results[name])
    assert results["localhost"] == ["127.0.0.1"]
    pid = results["pid"]
    # create_connection resolves first: that lookup is what is refused
    assert log.read_text().splitlines() == [f"{pid} connect {TEST_NET}"] * 2 + [f"{pid} resolve {TEST_NET}"] * 3
    # The session's home, not the user's: nothing the child caches (matplotlib, Keras, Chromium) lands in ~.
    assert results["home"] == os.environ["HOME"] != pwd.getpwuid(os.getuid()).pw_dir


def test_beams_worker_processes_are_guarded(tmp_path, monkeypatch):
    """A local multi-process run (the default of a job on two or more cores): the DoFn runs in worker processes that
    Beam starts, and there too a connection beyond loopback is refused and logged."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipeline import local_workers

    log = tmp_path / "attempts.log"
    log.touch()
    monkeypatch.setenv(NETWORK_LOG_ENV, str(log))  # the workers inherit it

    class Reach(beam.DoFn):  # defined here: pickled by value, so the worker needs no tests/ on its path
        def process(self, element, out=str(tmp_path)):
            import os
            import socket
            from pathlib import Path

            with socket.socket() as s:
                s.settimeout(3)
                try:
                    s.connect((TEST_NET, 9))
                    outcome = "connected"
                except OSError as err:
                    outcome = str(err)
            Path(out, f"outcome-{os.getpid()}-{element}").write_text(outcome)
            yield element

    options = PipelineOptions(["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    with beam.Pipeline(runner=local_workers.LocalRunner(), options=options) as pipeline:
        _ = pipeline | beam.Create(range(4)) | beam.Reshuffle() | beam.ParDo(Reach())
    outcomes = {p.name: p.read_text() for p in tmp_path.glob("outcome-*")}
    pids = {name.split("-")[1] for name in outcomes}
    assert len(outcomes) == 4 and pids and str(os.getpid()) not in pids  # run in worker processes, not here
    assert all("network beyond loopback is blocked" in text for text in outcomes.values()), outcomes
    logged = log.read_text().splitlines()
    assert len(logged) == 4 and {line.split()[0] for line in logged} == pids
    assert all(line.endswith(f" connect {TEST_NET}") for line in logged)


@pytest.fixture(scope="module")
def attempt_in_a_module_fixture(tmp_path_factory):
    """What a connection beyond loopback does while a module-scoped fixture is set up (before any function-scoped
    fixture of the test runs)."""
    log = tmp_path_factory.mktemp("module-attempt") / "attempts.log"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(NETWORK_LOG_ENV, str(log))
        with socket.socket() as s:
            s.settimeout(3)
            try:
                s.connect((TEST_NET, 9))
                return "connected", log.read_text()
            except OSError as err:
                return str(err), log.read_text()


def test_the_guard_is_in_force_in_module_fixtures(attempt_in_a_module_fixture):
    outcome, logged = attempt_in_a_module_fixture
    assert "network beyond loopback is blocked" in outcome
    assert logged == f"{os.getpid()} connect {TEST_NET}\n"


@permissions_apply
def test_without_permission_override_a_mode_000_file_is_unreadable_and_a_mode_500_folder_unwritable(tmp_path):
    """The fault tests' way to an honest PermissionError when the suite runs as root: the command runs without
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (as any other user would). Without the helper root reads and writes both
    (so the helper, not the modes alone, makes the difference)."""
    secret = tmp_path / "secret"
    secret.write_text("root-only")
    secret.chmod(0)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code = ("import sys\nfor path, mode in ((sys.argv[1], 'r'), (sys.argv[2] + '/new', 'w')):\n"
            "    try:\n        open(path, mode).close(); print('ok')\n"
            "    except OSError as err:\n        print(type(err).__name__)\n")
    command = [sys.executable, "-c", code, str(secret), str(locked)]
    try:
        limited = subprocess.run(without_permission_override(command), capture_output=True, text=True, timeout=60)
        assert limited.returncode == 0, limited.stderr
        assert limited.stdout.split() == ["PermissionError", "PermissionError"]
        if os.geteuid() == 0:
            plain = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
            assert plain.stdout.split() == ["ok", "ok"]
    finally:
        locked.chmod(0o700)
    assert Path(secret).stat().st_mode & 0o777 == 0
