"""Fault suite, options and outputs (issue 12, items 4 and 5): what can be known at launch fails at launch, a run
that writes nothing fails naming the stage that emptied it, and readers say when a run is incomplete.

CLI faults run ``python -m beam_pipeline.run`` in a fresh interpreter (tests/faults.py) and check the exit code, the
message on stderr and that nothing ran: no funnel printed, nothing created, or the output named as the problem even
though the inputs do not exist either (the output is checked before anything else is read).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from beam_pipeline import sample
from beam_pipeline.fileio.metadata import check_counts, empty_run_message
from beam_pipeline.fileio.outputs import check_writable
from beam_pipeline.pipeline import WORKER_INPUTS, build_pipeline, resolve_inputs, resolve_text
from beam_pipeline.readers.common import open_run
from beam_pipeline.run import in_run_folder, is_local, main, parse
import faults
from conftest import permissions_apply, without_permission_override


def nowhere(tmp_path: Path) -> sample.SampleRoots:
    """Input roots that do not exist: a job that names its output as the problem has not looked at them."""
    return sample.SampleRoots(*(str(tmp_path / "no-inputs" / name) for name in ("cxr", "ed", "iv")))


def assert_failed_at_launch(done, code: int, message: str) -> None:
    """Exit code, the message as the one line on stderr, and no funnel: the job never ran."""
    assert done.returncode == code, done.stderr[-3000:]
    assert message in done.stderr.strip().splitlines()[-1]
    assert done.stdout == ""


# --- the output is checked for writability before any work ---

def test_output_under_a_regular_file_fails_at_launch(clean_tree, tmp_path):
    """Fails even for root, whom folder permissions do not stop."""
    (tmp_path / "a-file").write_text("not a folder\n")
    done = faults.run_cli(clean_tree, tmp_path / "a-file" / "out")
    assert_failed_at_launch(done, 1, f"error: --output={tmp_path}/a-file/out cannot be written: NotADirectoryError")
    assert len(done.stderr.strip().splitlines()) == 1  # nothing else was logged: no stage ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@permissions_apply
def test_output_in_a_folder_without_write_permission_fails_at_launch(clean_tree, tmp_path):
    """A real PermissionError: when the suite runs as root, the job runs without root's file-permission override
    (conftest.without_permission_override), so the mode-500 folder stops it as it stops any other user."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    command = [sys.executable, "-m", "beam_pipeline.run", *faults.argv(nowhere(tmp_path), locked / "out")]
    try:
        done = subprocess.run(without_permission_override(command), capture_output=True, text=True, timeout=900)
    finally:
        locked.chmod(0o700)
    assert_failed_at_launch(done, 1, f"error: --output={locked}/out cannot be written: PermissionError")
    assert list(locked.iterdir()) == []


def test_output_with_an_unknown_scheme_fails_at_launch(tmp_path):
    done = faults.run_cli(nowhere(tmp_path), "s4://bucket/out")
    assert_failed_at_launch(done, 1, "error: --output=s4://bucket/out cannot be written: ValueError: Unable to get "
                                     "filesystem from specified path")


def test_output_in_a_missing_bucket_fails_at_launch(gcs_emulator, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(faults.argv(nowhere(tmp_path), "gs://no-such-bucket/out"))
    assert str(exit_.value.code) == ("error: --output=gs://no-such-bucket/out cannot be written: bucket "
                                     "gs://no-such-bucket does not exist")


REMOTE = ("--runner=DataflowRunner", "--project=p", "--region=us-central1", "--temp_location=gs://b/tmp")
IN_A_BUCKET = sample.SampleRoots("gs://b/cxr", "gs://b/ed", "gs://b/iv")


def test_local_output_on_a_remote_runner_fails_at_launch(tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main([*faults.argv(IN_A_BUCKET, tmp_path / "out"), *REMOTE])
    assert str(exit_.value.code) == (f"error: --output={tmp_path}/out is a local path, which remote workers cannot "
                                     "write; use a gs:// folder")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", WORKER_INPUTS)
def test_a_local_input_on_a_remote_runner_fails_at_launch(flag, gcs_emulator, tmp_path):
    """The launching machine can read it (it exists here), so nothing else would stop the job before every worker
    failed on it. Refused before anything is read or probed: the gs:// paths name no bucket the emulator holds."""
    local = tmp_path / flag
    local.mkdir()
    with pytest.raises(SystemExit) as exit_:
        main([*faults.argv(IN_A_BUCKET, "gs://b/out"), f"--{flag}={local}", *REMOTE])
    assert str(exit_.value.code) == (f"error: --{flag}={local} is a local path, which remote workers cannot read; "
                                     "use a gs:// path (copy it to a bucket)")


def test_local_leakage_rules_pass_a_remote_launch_which_reads_them_itself(gcs_emulator, tmp_path):
    """The rules travel inside the job (pipeline.LAUNCH_INPUTS), so the local file is not refused: the launch goes
    on to the next check, the output's bucket (which the emulator does not hold)."""
    rules = tmp_path / "rules.json"
    rules.write_text('{"rules": []}')
    with pytest.raises(SystemExit) as exit_:
        main([*faults.argv(IN_A_BUCKET, "gs://b/out"), f"--leakage_rules={rules}", *REMOTE])
    assert str(exit_.value.code).startswith("error: --output=gs://b/out cannot be written")


@pytest.mark.parametrize("runner", ["direct", "DirectRunner", "directrunner", "BundleBasedDirectRunner", "prism",
                                    "PrismRunner", "FnApiRunner",
                                    "apache_beam.runners.direct.direct_runner.SwitchingDirectRunner"])
def test_every_name_beam_gives_a_local_runner_runs_locally(runner, tmp_path):
    """Beam resolves runner names case-insensitively, "Runner" optional: --runner=direct is a local run, whose
    local output is fine (the missing inputs stop it, after the output was checked), not a remote one's."""
    assert is_local(PipelineOptions([f"--runner={runner}"]))
    done = faults.run_cli(nowhere(tmp_path), tmp_path / "out", f"--runner={runner}")
    assert_failed_at_launch(done, 1, f"error: cxr_metadata: no input file found; tried {tmp_path}/no-inputs/cxr/")


@pytest.mark.parametrize("runner", ["DataflowRunner", "dataflow", "apache_beam.runners.dataflow.DataflowRunner"])
def test_dataflow_is_remote_by_any_name(runner):
    assert not is_local(PipelineOptions([f"--runner={runner}"]))


def test_the_write_probe_leaves_nothing_behind(gcs_emulator, tmp_path):
    check_writable(str(tmp_path / "new" / "out"))
    assert list(tmp_path.iterdir()) == []  # the folders the probe made are gone too
    (tmp_path / "kept" / "runs").mkdir(parents=True)
    check_writable(str(tmp_path / "kept"))
    assert [p.name for p in (tmp_path / "kept").rglob("*")] == ["runs"]
    gcs_emulator.create_bucket("probe-clean")
    check_writable("gs://probe-clean/out")
    assert list(gcs_emulator.list_blobs("probe-clean")) == []


# --- every number option rejects NaN, infinities and values out of its bounds ---

@pytest.mark.parametrize("flag, message", [
    ("--split_fractions=nan,nan,nan", "--split_fractions must be finite, got nan,nan,nan"),
    ("--window_start_hours=nan", "--window_start_hours must be finite, got nan"),
    ("--window_end_hours=inf", "--window_end_hours must be finite, got inf"),
    ("--target_shard_mb=nan", "--target_shard_mb must be finite, got nan"),
    ("--text_batch_size=1000000000000", "--text_batch_size must be between 1 and 100000, got 1000000000000"),
])
def test_bad_numbers_are_argument_errors(flag, message, tmp_path):
    done = faults.run_cli(nowhere(tmp_path), tmp_path / "out", flag)
    assert_failed_at_launch(done, 2, f"python -m beam_pipeline.run: error: invalid options: {message}")
    assert not (tmp_path / "out").exists()


def test_unknown_flag_is_an_argument_error(tmp_path):
    done = faults.run_cli(nowhere(tmp_path), tmp_path / "out", "--windw_end_hours=12")
    assert_failed_at_launch(done, 2, "python -m beam_pipeline.run: error: unknown flags: --windw_end_hours")
    assert not (tmp_path / "out").exists()


# --- local parallelism: every core by default, N worker processes for --direct_num_workers=N ---

@pytest.mark.parametrize("flags, workers, mode", [
    (("--direct_num_workers=1",), 1, "in_memory"),  # one in-process worker
    (("--direct_num_workers=3",), 3, "multi_processing"),  # not Beam's N threads in one process
    (("--direct_num_workers", "3"), 3, "multi_processing"),
    (("--direct_num_workers=2", "--direct_running_mode=multi_threading"), 2, "multi_threading"),  # as given
])
def test_local_runs_use_worker_processes(flags, workers, mode, tmp_path):
    _, options = parse([f"--mimic_cxr_root={tmp_path}", f"--mimic_ed_root={tmp_path}", f"--output={tmp_path / 'o'}",
                        *flags])
    direct = options.view_as(beam.options.pipeline_options.DirectOptions)
    assert (direct.direct_num_workers, direct.direct_running_mode) == (workers, mode)


GIB = 2 ** 30


def _first_line(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpu_limit_here() -> float | None:
    """The container's CPU quota in CPUs, read here (cgroup v2 cpu.max, else v1 cfs quota / period); None: none."""
    v2, quota, period = (_first_line(f"/sys/fs/cgroup/{name}") for name in
                         ("cpu.max", "cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us"))
    if v2:
        quota, period = v2.split()
    return int(quota) / int(period) if quota and quota.lstrip("-").isdigit() and int(quota) > 0 else None


def memory_here() -> int:
    """MemAvailable, capped by the container's memory limit (cgroup v2 memory.max, else v1), read here."""
    kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemAvailable:"))
    limits = [int(text) for text in map(_first_line, ("/sys/fs/cgroup/memory.max",
                                                      "/sys/fs/cgroup/memory/memory.limit_in_bytes"))
              if text and text.isdigit()]
    return min([kib * 1024, *limits])


@pytest.mark.parametrize("flags", [(), ("--direct_num_workers=0",)])  # by default, and Beam's "one per core"
def test_a_local_run_starts_one_worker_per_core_it_may_use(flags, tmp_path):
    """The expectation does not come from local_workers: the CLI parses its flags in a child pinned to two cores
    (``taskset``; one when this process may use only one), and the README's rule is applied here to figures read
    here. One worker process per pinned core (capped by a CPU quota), by default no more than fit in the available
    memory at 1 GiB each beside the runner's 0.75 GiB; ``0`` skips the memory cap. MemAvailable moves between this
    reading and the child's, so a reading within 0.25 GiB of a step accepts both sides of it."""
    pinned = set(sorted(os.sched_getaffinity(0))[:2])
    quota = cpu_limit_here()
    cores = max(1, min(len(pinned), math.ceil(quota))) if quota else len(pinned)
    expected = {cores}
    if not flags:
        memory = memory_here()
        expected = {max(1, min(cores, int((m - 0.75 * GIB) // GIB))) for m in (memory - GIB // 4, memory + GIB // 4)}
    code = ("import sys; from beam_pipeline.run import parse; from apache_beam.options.pipeline_options import "
            "DirectOptions; o = parse(sys.argv[1:])[1].view_as(DirectOptions); "
            "print(o.direct_num_workers, o.direct_running_mode)")
    argv = [f"--mimic_cxr_root={tmp_path}", f"--mimic_ed_root={tmp_path}", f"--output={tmp_path / 'o'}", *flags]
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True,
                          timeout=300, preexec_fn=lambda: os.sched_setaffinity(0, pinned))
    workers, mode = done.stdout.split()
    assert int(workers) in expected, (workers, expected)
    assert mode == ("multi_processing" if int(workers) > 1 else "in_memory")


# --- a run that writes no records fails, names the stage that emptied it, and is not published ---

def only_run(output: Path) -> Path:
    [folder] = (output / "runs").iterdir()
    return folder


def assert_complete_and_adds_up(folder: Path) -> dict:
    metadata = json.loads((folder / "metadata.json").read_text())
    counts = metadata["counts"]
    assert counts["matched"] == 0 and check_counts(counts, metadata["outputs"]) == []
    assert sum(1 for path in (folder / "rejects").glob("*.jsonl") for _ in path.open()) == counts["rejects_total"]
    return counts


def test_no_kept_view_exits_non_zero_with_the_funnel(clean_tree, tmp_path):
    output = tmp_path / "out"
    done = faults.run_cli(clean_tree, output, "--views=ap,pa")
    assert done.returncode == 1, done.stderr[-3000:]
    folder = only_run(output)
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {folder} wrote no records, so it was not published: no image has a kept view (--views=ap,pa; "
        "values match ViewPosition exactly; MIMIC's are capitals such as AP,PA)")
    counts = assert_complete_and_adds_up(folder)
    assert counts["images_kept_view"] == 0 and counts["images_other_view"] == counts["images_total"] > 0
    assert "  kept views (ap,pa)                        0" in done.stdout.splitlines()
    assert "matched and written" in done.stdout and "Report:" not in done.stdout
    assert not (output / "LATEST").exists()


def test_an_empty_run_never_replaces_the_published_one(clean_run, clean_tree, tmp_path, capsys):
    """No X-ray falls in the window (the sample has none 100-1000 h after arrival): the run fails, and with
    --overwrite the clean run stays published."""
    clean_output, clean = clean_run
    output = tmp_path / "out"
    shutil.copytree(clean_output, output)
    with pytest.raises(SystemExit) as exit_:
        main(faults.argv(clean_tree, output, "--window_start_hours=100", "--window_end_hours=1000", "--overwrite"))
    [folder] = [p for p in (output / "runs").iterdir() if str(p) != clean["config"]["output"].replace(
        str(clean_output), str(output))]
    counts = assert_complete_and_adds_up(folder)
    assert counts["no_ed_stay"] == counts["images_kept_view"] - counts["rejected"] > 0
    assert str(exit_.value.code).startswith(
        f"error: {folder} wrote no records, so it was not published: no kept image matched an ED stay in the window "
        f"(--window_start_hours=100.0, --window_end_hours=1000.0): {counts['no_ed_stay']} without a stay")
    assert "no ED stay in window" in capsys.readouterr().out
    assert open_run(str(output))[1]["outputs"] == clean["outputs"]  # LATEST unchanged, the clean run intact


def test_on_remote_runners_an_empty_run_fails_the_job(clean_tree, tmp_path):
    """Every image missing: every linked record is rejected. Built as execute builds it for Dataflow (where nobody
    waits for the counts), the job itself fails naming the reasons; metadata.json is written, LATEST is not."""
    roots = faults.fresh_tree(clean_tree, tmp_path)
    shutil.rmtree(Path(roots.cxr) / "files")
    config, options = parse(faults.argv(roots, tmp_path / "out"))
    paths, text = resolve_inputs(config), resolve_text(config)
    pipeline = beam.Pipeline(runner=FnApiRunner(), options=options)
    build_pipeline(pipeline, in_run_folder(config, dt.datetime.now(dt.timezone.utc)), paths, text, config.output,
                   fail_when_empty=True)
    with pytest.raises(Exception, match=r"wrote no records, so it was not published: the remaining (\d+) images "
                                        r"were all rejected at the images stage: images/missing_image \1\b"):
        pipeline.run()
    counts = assert_complete_and_adds_up(only_run(tmp_path / "out"))
    assert [k for k in counts["rejected_by_reason"] if k.startswith("images/")] == ["images/missing_image"]
    assert not (tmp_path / "out" / "LATEST").exists()


def funnel(kept: int, no_ed_stay: int = 0, dropped: int = 0, **rejected: int) -> dict:
    """Counts of an empty run: ``kept`` images of a kept view, none written."""
    by_reason = {key.replace("__", "/"): n for key, n in rejected.items()}
    assert kept == no_ed_stay + dropped + sum(by_reason.values())
    return {"images_total": kept + 5, "images_unreadable": 0, "images_kept_view": kept, "no_ed_stay": no_ed_stay,
            "dropped_after_ed_departure": dropped, "rejected_by_reason": by_reason}


CONFIG = {"output": "OUT/runs/1", "views": ["AP", "PA"], "window_start_hours": 0.0, "window_end_hours": 24.0}


@pytest.mark.parametrize("counts, reason", [
    ({**funnel(0), "images_total": 0}, "the metadata table has no readable data rows"),
    ({**funnel(0), "images_unreadable": 5}, "the metadata table has no readable data rows"),
    (funnel(0), "no image has a kept view (--views=AP,PA; values match ViewPosition exactly; MIMIC's are capitals "
                "such as AP,PA)"),
    (funnel(9, no_ed_stay=6, dropped=1, metadata__bad_study_time=1, join__duplicate_dicom_id=1),
     "no kept image matched an ED stay in the window (--window_start_hours=0.0, --window_end_hours=24.0): 6 without "
     "a stay, 1 taken after ED departure (--within_ed_stay), 2 rejected (join/duplicate_dicom_id 1, "
     "metadata/bad_study_time 1)"),
    (funnel(3, no_ed_stay=3), "no kept image matched an ED stay in the window (--window_start_hours=0.0, "
                              "--window_end_hours=24.0): 3 without a stay"),
    (funnel(3, metadata__bad_study_time=3), "the remaining 3 images were all rejected at the metadata stage: "
                                            "metadata/bad_study_time 3"),
    (funnel(20, no_ed_stay=4, split__not_in_official_split=9, images__missing_image=5, images__not_a_jpeg=2),
     "the remaining 7 images were all rejected at the images stage: images/missing_image 5, images/not_a_jpeg 2"),
    (funnel(8, no_ed_stay=4, future__new_reason=2, split__not_in_official_split=2),  # unknown stages count last
     "the remaining 2 images were all rejected at the future stage: future/new_reason 2"),
])
def test_the_stage_that_emptied_a_run_is_named(counts, reason):
    assert empty_run_message(counts, CONFIG) == f"OUT/runs/1 wrote no records, so it was not published: {reason}"


# --- readers on a run that is incomplete or still running ---

def test_readers_say_a_run_without_metadata_is_incomplete(clean_run, tmp_path):
    from beam_pipeline.readers.pytorch import MimicCxrEdDataset

    clean_output, _ = clean_run
    output = tmp_path / "out"
    shutil.copytree(clean_output, output)
    folder = output / (output / "LATEST").read_text().strip()
    (folder / "metadata.json").unlink()  # as while the job still writes shards
    assert list((folder / "tfrecords").glob("*.tfrecord"))
    with pytest.raises(FileNotFoundError) as err:
        open_run(str(folder))  # the run folder itself
    assert str(err.value) == (f"{folder} holds no complete run (no LATEST, no metadata.json): the run is incomplete "
                              "or still running (its job failed, was stopped or has not finished)")
    for reader in (open_run, lambda path: MimicCxrEdDataset(path, "train")):  # LATEST names it
        with pytest.raises(FileNotFoundError, match=f"^{folder}, which {output}/LATEST names, has no metadata.json: "
                                                    "the run is incomplete or still running"):
            reader(str(output))
    (output / "LATEST").unlink()
    with pytest.raises(FileNotFoundError, match=f"^{output} holds no complete run .*incomplete or still running"):
        open_run(str(output))


def test_job_errors_print_alone_and_code_errors_keep_their_traceback():
    from beam_pipeline.run import job_error

    worker = RuntimeError("Traceback ...\nbeam_pipeline.fileio.sharded.DuplicateKeyError: 2 keys appear twice "
                          "[while running 'AssertUniqueKeys/Check']\n")
    assert job_error(worker) == "2 keys appear twice"
    assert job_error(RuntimeError("Traceback ...\nKeyError: 'subject_id' [while running 'Join']")) is None
    assert job_error(KeyError("subject_id")) is None
