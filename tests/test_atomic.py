"""Crash consistency: a run killed at any step of writing or publishing leaves the output folder holding exactly one
complete, readable run (the previous one or the new one), and no metadata.json names a file that is not there.

Each kill is real: the job runs as ``python -m beam_pipeline.run`` in its own process and signals itself at a named
point (beam_pipeline.failpoints), so every step of the publish sequence is hit exactly, without timing races.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from beam_pipeline import failpoints, sample
from beam_pipeline.fileio.tfrecord import read_records
from beam_pipeline.readers.common import open_run, shard_files
from beam_pipeline.run import run
from conftest import ONE_WORKER, OFFLINE_TEXT

# Small shards, so a kill after the first one leaves a run folder with some shards written and others not; one
# in-process worker, so the process that reaches a kill point is the job itself.
FLAGS = [OFFLINE_TEXT, ONE_WORKER, "--target_shard_mb=0.05"]


@pytest.fixture(scope="module")
def previous(tmp_path_factory):
    """Sample roots and an output folder holding one complete, published run (its metadata)."""
    base = tmp_path_factory.mktemp("atomic")
    roots = sample.generate(base / "sample", subjects=8, seed=5)
    flags = [f"--mimic_cxr_root={roots.cxr}", f"--mimic_ed_root={roots.ed}", f"--mimic_iv_root={roots.iv}", *FLAGS]
    output = base / "out"
    metadata = run(flags + [f"--output={output}"])
    assert len(metadata["outputs"]["files"]) > 6  # several shards per split
    return flags, output, metadata


def job(flags: list[str], output: Path, kill_at: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop(failpoints.ENV, None)
    if kill_at:
        env[failpoints.ENV] = kill_at
    return subprocess.run([sys.executable, "-m", "beam_pipeline.run", *flags, f"--output={output}", "--overwrite"],
                          env=env, capture_output=True, text=True, timeout=300)


def complete_runs(output: Path) -> list[Path]:
    """Every run folder under output marked complete; asserts that each names only files that exist."""
    folders = []
    for marker in sorted(output.rglob("metadata.json")):
        listed = json.loads(marker.read_text())["outputs"]["files"]
        missing = [name for name in listed if not (marker.parent / name).is_file()]
        assert not missing, f"{marker} names missing files {missing[:3]}"
        folders.append(marker.parent)
    return folders


def assert_one_readable_run(output: Path) -> dict:
    """The published run opens through the readers' entry point, every split's shards are all there and hold the
    record counts metadata.json states; returns its metadata."""
    folder, metadata = open_run(str(output))
    assert Path(folder) in complete_runs(output)
    for split, written in metadata["outputs"]["tfrecords"].items():
        records = sum(1 for path in shard_files(folder, split, metadata) for _ in read_records(path))
        assert records == written["records"], split
    return metadata


def same_run(a: dict, b: dict) -> bool:
    return a["config"]["output"] == b["config"]["output"] and a["outputs"] == b["outputs"]


# (failpoint, signal, which run the output must hold afterwards)
KILLS = [
    ("shard_written", "SIGKILL", "previous"),  # some shards of the new run written, others not
    ("shard_written", "SIGTERM", "previous"),
    ("before_metadata", "SIGKILL", "previous"),  # every shard written, metadata.json not yet
    ("metadata_written", "SIGKILL", "previous"),  # new run complete but not yet published
    ("latest_staged", "SIGKILL", "previous"),  # ...and the new LATEST written beside the old one, not yet renamed
    ("published", "SIGKILL", "new"),  # LATEST moved, the previous run not yet deleted
    ("removed_marker", "SIGTERM", "new"),  # the previous run half-deleted: its metadata.json gone first
]


@pytest.mark.parametrize("point,signame,expected", KILLS, ids=[f"{p}-{s}" for p, s, _ in KILLS])
def test_a_killed_overwrite_leaves_exactly_one_complete_run(previous, tmp_path, point, signame, expected):
    flags, original, first = previous
    output = tmp_path / "out"
    shutil.copytree(original, output)
    killed = job(flags, output, f"{point}:{signame}")
    assert killed.returncode == -getattr(signal, signame), killed.stderr[-2000:]

    metadata = assert_one_readable_run(output)
    if expected == "previous":
        assert same_run(metadata, first)
    else:
        assert not same_run(metadata, first) and metadata["counts"] == first["counts"]
    survivors = complete_runs(output)
    assert len(survivors) == {"shard_written": 1, "before_metadata": 1, "metadata_written": 2, "latest_staged": 2,
                              "published": 2, "removed_marker": 1}[point]
    assert len(list(output.glob(".tmp-*"))) == (point == "latest_staged")

    # The next run recovers: it publishes and removes everything else, complete or not.
    run(flags + [f"--output={output}", "--overwrite"])
    final = assert_one_readable_run(output)
    assert complete_runs(output) == [Path(final["config"]["output"])]
    assert [p.name for p in (output / "runs").iterdir()] == [Path(final["config"]["output"]).name]
    assert sorted(p.name for p in output.iterdir()) == ["LATEST", "runs"]  # a killed job's temporary LATEST too


def test_a_killed_first_run_leaves_no_run_and_readers_say_so(previous, tmp_path):
    flags, _, _ = previous
    output = tmp_path / "out"
    killed = job(flags, output, "before_metadata:SIGKILL")
    assert killed.returncode == -signal.SIGKILL
    assert not (output / "LATEST").exists() and complete_runs(output) == []
    with pytest.raises(FileNotFoundError, match="holds no complete run.*incomplete or still running"):
        open_run(str(output))


def test_unknown_failpoint_is_an_error(monkeypatch):
    monkeypatch.setenv(failpoints.ENV, "nowhere")
    with pytest.raises(ValueError, match="unknown point"):
        failpoints.reached("published")


@pytest.fixture
def paused_job():
    """Starts a job on an output with --keep_runs that stops itself (SIGSTOP) at a failpoint, and returns once it
    has; jobs still alive when the test ends are killed."""
    started = []

    def start(flags: list[str], output: Path, point: str, logs: Path) -> subprocess.Popen:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", failpoints.ENV: f"{point}:SIGSTOP"}
        with open(logs, "w") as log:
            started.append(subprocess.Popen([sys.executable, "-m", "beam_pipeline.run", *flags, f"--output={output}",
                                             "--keep_runs"], env=env, stdout=log, stderr=subprocess.STDOUT))
        _, status = os.waitpid(started[-1].pid, os.WUNTRACED)  # returns when the job stops itself (or ends)
        assert os.WIFSTOPPED(status), logs.read_text()[-2000:]
        return started[-1]

    yield start
    for process in started:
        if process.returncode is None:
            process.kill()
            process.wait()


def resumed(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGCONT)
    return process.wait(timeout=300)


def test_a_run_whose_files_another_job_deleted_fails_instead_of_publishing(previous, paused_job, tmp_path):
    """Two jobs on one output: the later one publishes while the earlier one is still writing and, as it must
    clean up failed runs, deletes the earlier one's unfinished folder; the earlier one then fails rather than
    publishing a run with missing shards."""
    flags, _, _ = previous
    output = tmp_path / "out"
    earlier = paused_job(flags, output, "before_metadata", tmp_path / "earlier.log")  # every shard written
    later = run(flags + [f"--output={output}", "--keep_runs"])
    assert resumed(earlier) == 1
    assert "files this run wrote are no longer there" in (tmp_path / "earlier.log").read_text()
    assert same_run(assert_one_readable_run(output), later) and complete_runs(output) == [
        Path(later["config"]["output"])]


def test_a_run_never_deletes_an_unfinished_run_that_started_after_it(previous, paused_job, tmp_path):
    """Two jobs on one output, the earlier one finishing while the later one is still writing: the later one's
    folder is left alone, and both publish in turn."""
    flags, _, _ = previous
    output = tmp_path / "out"
    earlier = paused_job(flags, output, "before_metadata", tmp_path / "earlier.log")
    later = paused_job(flags, output, "before_metadata", tmp_path / "later.log")
    assert resumed(earlier) == 0
    assert resumed(later) == 0, (tmp_path / "later.log").read_text()[-2000:]
    runs = complete_runs(output)
    assert len(runs) == 2 and open_run(str(output))[0] == str(runs[-1])  # LATEST: the later run
    assert_one_readable_run(output)
