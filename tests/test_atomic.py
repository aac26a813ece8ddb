"""Crash consistency: a run killed at any step of writing or publishing leaves the output folder holding exactly one
complete, readable run (the previous one or the new one), and no metadata.json names a file that is not there; the
next run removes what the killed one left, and with --keep_runs keeps exactly the runs that were published.

Each kill is real: the job runs as ``python -m beam_pipeline.run`` in its own process and signals itself at a named
point (beam_pipeline.failpoints), so every step of the publish sequence is hit exactly, without timing races.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from beam_pipeline import failpoints, sample
from beam_pipeline.fileio import outputs
from beam_pipeline.fileio.tfrecord import read_records
from beam_pipeline.readers.common import open_run, shard_files
from beam_pipeline.run import run
from conftest import ONE_WORKER, OFFLINE_TEXT, create_bucket

# Small shards, so a kill after the first one leaves a run folder with some shards written and others not; one
# in-process worker, so the process that reaches a kill point is the job itself.
FLAGS = [OFFLINE_TEXT, ONE_WORKER, "--target_shard_mb=0.05"]
MODES = ("--overwrite", "--keep_runs")


def job(flags: list[str], output: Path, mode: str, kill_at: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop(failpoints.ENV, None)
    if kill_at:
        env[failpoints.ENV] = kill_at
    return subprocess.run([sys.executable, "-m", "beam_pipeline.run", *flags, f"--output={output}", mode],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def previous(tmp_path_factory):
    """Sample roots and an output folder holding one complete, published run (its metadata) and the complete folder
    of a later run killed before it was published (its name)."""
    base = tmp_path_factory.mktemp("atomic")
    roots = sample.generate(base / "sample", subjects=8, seed=5)
    flags = [f"--mimic_cxr_root={roots.cxr}", f"--mimic_ed_root={roots.ed}", f"--mimic_iv_root={roots.iv}", *FLAGS]
    output = base / "out"
    metadata = run(flags + [f"--output={output}"])
    assert len(metadata["outputs"]["files"]) > 6  # several shards per split
    killed = job(flags, output, "--keep_runs", "metadata_written:SIGKILL")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    [leftover] = [p.name for p in complete_runs(output) if str(p) != metadata["config"]["output"]]
    return flags, output, metadata, leftover


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


def name(metadata: dict) -> str:
    return Path(metadata["config"]["output"]).name


def assert_readers_take_published_runs_only(output: Path, published: set[str]) -> None:
    """Each complete run folder opens through the readers' entry point if it was published (LATEST named it), and
    is refused as never published otherwise."""
    for folder in complete_runs(output):
        if folder.name in published:
            assert open_run(str(folder))[0] == str(folder)
        else:
            with pytest.raises(FileNotFoundError, match=f"^{re.escape(str(folder))} holds a run that was never "
                                                        "published: "):
                open_run(str(folder))


# (failpoint, signal, which run the output must hold afterwards)
KILLS = [
    ("shard_written", "SIGKILL", "previous"),  # some shards of the new run written, others not
    ("shard_written", "SIGTERM", "previous"),
    ("before_metadata", "SIGKILL", "previous"),  # every shard written, metadata.json not yet
    ("metadata_written", "SIGKILL", "previous"),  # new run complete but not yet published
    ("previous_marked", "SIGKILL", "previous"),  # ...and the run LATEST names marked PUBLISHED, LATEST not yet moved
    ("latest_staged", "SIGKILL", "previous"),  # ...and the new LATEST written beside the old one, not yet renamed
    ("published", "SIGKILL", "new"),  # LATEST moved, nothing removed yet
    ("removed_marker", "SIGTERM", "new"),  # the first run it removes half-deleted: its metadata.json gone first
]
# Complete runs after each kill: the previous run, the leftover and the new run once complete, less the run half-deleted
# at removed_marker (the previous one with --overwrite, the never published leftover with --keep_runs).
COMPLETE = {"shard_written": 2, "before_metadata": 2, "metadata_written": 3, "previous_marked": 3, "latest_staged": 3,
            "published": 3, "removed_marker": 2}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("point,signame,expected", KILLS, ids=[f"{p}-{s}" for p, s, _ in KILLS])
def test_a_killed_run_leaves_exactly_one_complete_run_and_the_next_one_recovers(previous, tmp_path, point, signame,
                                                                                 expected, mode):
    flags, original, first, leftover = previous
    output = tmp_path / "out"
    shutil.copytree(original, output)
    killed = job(flags, output, mode, f"{point}:{signame}")
    assert killed.returncode == -getattr(signal, signame), killed.stderr[-2000:]

    metadata = assert_one_readable_run(output)
    [new] = [p.name for p in (output / "runs").iterdir() if p.name not in (name(first), leftover)]
    if expected == "previous":
        assert same_run(metadata, first)
    else:
        assert name(metadata) == new and metadata["counts"] == first["counts"]
    assert len(complete_runs(output)) == COMPLETE[point]
    assert len(list(output.glob(".tmp-*"))) == (point == "latest_staged")
    published = {name(first)} | ({new} if expected == "new" else set())
    assert_readers_take_published_runs_only(output, published)

    # The next run recovers: it publishes and removes the rest, complete or not, but with --keep_runs the runs that
    # were published.
    final = run(flags + [f"--output={output}", mode])
    assert same_run(assert_one_readable_run(output), final)
    kept = sorted({name(final)} | (published if mode == "--keep_runs" else set()))
    assert [p.name for p in complete_runs(output)] == kept
    assert sorted(p.name for p in (output / "runs").iterdir()) == kept
    assert sorted(p.name for p in output.iterdir()) == ["LATEST", "runs"]  # a killed job's temporary LATEST too
    assert_readers_take_published_runs_only(output, set(kept))


def test_keep_runs_keeps_every_run_an_older_version_may_have_published(previous, tmp_path):
    """Versions before PUBLISHED marked no run: on upgrade, the complete runs that started before the one LATEST
    names are kept, as they may have been published (a run those versions failed to publish among them: it looks the
    same), while a later one was never published and is removed."""
    flags, original, first, leftover = previous
    output = tmp_path / "out"
    shutil.copytree(original, output)
    second = job(flags, output, "--keep_runs", "published:SIGKILL")  # LATEST moved, the leftover not yet removed
    assert second.returncode == -signal.SIGKILL, second.stderr[-2000:]
    (output / "runs" / name(first) / outputs.PUBLISHED).unlink()  # what an older version leaves
    failed = job(flags, output, "--keep_runs", "metadata_written:SIGKILL")
    assert failed.returncode == -signal.SIGKILL, failed.stderr[-2000:]
    [second_run, failed_run] = sorted(p.name for p in (output / "runs").iterdir()
                                      if p.name not in (name(first), leftover))
    old = {name(first), leftover, second_run}
    assert_readers_take_published_runs_only(output, old)

    final = run(flags + [f"--output={output}", "--keep_runs"])
    assert same_run(assert_one_readable_run(output), final)
    assert [p.name for p in complete_runs(output)] == sorted(old | {name(final)})
    assert sorted(p.name for p in (output / "runs").iterdir()) == sorted(old | {name(final)})
    assert_readers_take_published_runs_only(output, old | {name(final)})


@pytest.mark.parametrize("complete, published, never", [
    ({"1", "2"}, set(), {"1", "2"}),  # nothing published yet
    ({"1", "2", "3"}, {"2"}, {"3"}),  # an older version's output: 1 may have been published
    ({"1", "2", "3", "4", "5"}, {"2", "4"}, {"3", "5"}),
])
def test_a_complete_run_is_published_if_known_or_older_than_every_known_one(complete, published, never):
    assert outputs.never_published(complete, published) == never


def test_keep_runs_on_gcs_keeps_only_published_runs(previous, gcs_server, tmp_path, monkeypatch):
    """On gs:// (the GCS emulator): a run that failed after writing metadata.json is refused by the readers and
    removed by the next run published beside it, while the run that run replaced is kept and still readable."""
    flags, _, _, _ = previous
    client, _ = gcs_server
    create_bucket(*gcs_server, "atomic")
    output = f"gs://atomic/{tmp_path.name}"
    first = run(flags + [f"--output={output}"])
    monkeypatch.setenv(failpoints.ENV, "metadata_written:raise")
    with pytest.raises(Exception, match=failpoints.ENV):
        run(flags + [f"--output={output}", "--keep_runs"])
    monkeypatch.delenv(failpoints.ENV)

    def runs() -> list[str]:
        return sorted({blob.name.split("/")[2] for blob in client.list_blobs("atomic", prefix=f"{tmp_path.name}/")
                       if blob.name.endswith("/metadata.json")})

    [failed] = [run_id for run_id in runs() if run_id != name(first)]
    with pytest.raises(FileNotFoundError, match="never published"):
        open_run(f"{output}/runs/{failed}")
    second = run(flags + [f"--output={output}", "--keep_runs"])
    assert open_run(output)[1] == second and open_run(first["config"]["output"])[1] == first
    assert runs() == sorted([name(first), name(second)])
    assert not list(client.list_blobs("atomic", prefix=f"{tmp_path.name}/runs/{failed}/"))


def test_copies_of_runs_without_latest_beside_them_are_read(previous, tmp_path):
    """A copied runs/ folder (or one run copied into another runs/ folder) has no LATEST to tell published from
    never published: readers take it, as they take a copy anywhere else, instead of refusing the published run."""
    _, output, metadata, _ = previous
    published = Path(metadata["config"]["output"]).name
    shutil.copytree(output / "runs", tmp_path / "copy" / "runs")
    shutil.copytree(output / "runs" / published, tmp_path / "one" / "runs" / published)
    for folder in (tmp_path / "copy" / "runs" / published, tmp_path / "one" / "runs" / published):
        assert open_run(str(folder))[1] == metadata


def test_a_killed_first_run_leaves_no_run_and_readers_say_so(previous, tmp_path):
    flags, _, _, _ = previous
    output = tmp_path / "out"
    killed = job(flags, output, "--overwrite", "before_metadata:SIGKILL")
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
    flags, _, _, _ = previous
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
    flags, _, _, _ = previous
    output = tmp_path / "out"
    earlier = paused_job(flags, output, "before_metadata", tmp_path / "earlier.log")
    later = paused_job(flags, output, "before_metadata", tmp_path / "later.log")
    assert resumed(earlier) == 0
    assert resumed(later) == 0, (tmp_path / "later.log").read_text()[-2000:]
    runs = complete_runs(output)
    assert len(runs) == 2 and open_run(str(output))[0] == str(runs[-1])  # LATEST: the later run
    assert_one_readable_run(output)
