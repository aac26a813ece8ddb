"""How many worker processes a local run starts by default: the cores this process may use (affinity, the cgroup's
CPU quota), no more than fit in memory (MemAvailable, the cgroup's limit)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from beam_pipeline import local_workers as lw

GIB = 1 << 30


def cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text + "\n")
    return tmp_path


@pytest.mark.parametrize("files, cpus", [
    ({"cpu.max": "max 100000"}, None),  # v2, no quota
    ({"cpu.max": "150000 100000"}, 1.5),  # v2: docker --cpus=1.5
    ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),  # v1, no quota
    ({"cpu/cpu.cfs_quota_us": "200000", "cpu/cpu.cfs_period_us": "100000"}, 2.0),  # v1
    ({}, None),  # no cgroup files at all (macOS, a bare chroot)
])
def test_cpu_quota_reads_v2_and_v1(tmp_path, files, cpus):
    assert lw.cpu_quota(cgroup(tmp_path, files)) == cpus


@pytest.mark.parametrize("files, limit", [
    ({"memory.max": "max"}, None),
    ({"memory.max": str(4 * GIB)}, 4 * GIB),
    ({"memory/memory.limit_in_bytes": str(6 * GIB)}, 6 * GIB),
    ({}, None),
])
def test_memory_limit_reads_v2_and_v1(tmp_path, files, limit):
    assert lw.memory_limit(cgroup(tmp_path, files)) == limit


MEMINFO = "MemTotal:       24576000 kB\nMemFree:         1000000 kB\nMemAvailable:   20971520 kB\n"


def test_available_memory_is_memavailable_capped_by_the_cgroup():
    assert lw.available_memory(MEMINFO, None) == 20 * GIB
    assert lw.available_memory(MEMINFO, 4 * GIB) == 4 * GIB
    assert lw.available_memory(MEMINFO, 9223372036854771712) == 20 * GIB  # cgroup v1's "no limit"
    assert lw.available_memory("", 3 * GIB) == 3 * GIB and lw.available_memory("", None) is None


@pytest.mark.parametrize("affinity, quota, cores", [(64, 2.0, 2), (64, 1.5, 2), (2, None, 2), (4, 0.5, 1), (0, None, 1)])
def test_usable_cores_are_the_affinity_capped_by_the_quota(affinity, quota, cores):
    assert lw.usable_cores(affinity, quota) == cores


@pytest.mark.parametrize("cores, memory, workers", [
    (2, 24 * GIB, 2),  # this project's VMs: every core
    (16, 16 * GIB, 15),  # a laptop: 16 workers of ~0.9 GB and the runner would not fit
    (8, 2 * GIB, 1),  # a small container: one worker (then in-process)
    (4, None, 4),  # memory unknown: every core
])
def test_default_workers_fit_in_memory(cores, memory, workers):
    assert lw.default_workers(cores, memory) == workers


def test_this_machine():
    workers, cores, memory = lw.machine()
    assert 1 <= workers <= cores <= len(os.sched_getaffinity(0))
    assert memory is not None and memory > 0


@pytest.mark.parametrize("flags", [(), ("--direct_num_workers=0",)])  # by default, and Beam's "one per core"
def test_a_job_pinned_to_one_core_runs_one_in_process_worker(tmp_path, flags):
    """The CLI's own parsing in a process that may run on one CPU only (``taskset -c 0``, as a scheduler or a
    container would pin it): no worker processes, although the host has more cores."""
    code = ("import sys; from beam_pipeline.run import parse; from apache_beam.options.pipeline_options import "
            "DirectOptions; o = parse(sys.argv[1:])[1].view_as(DirectOptions); "
            "print(o.direct_num_workers, o.direct_running_mode)")
    argv = [f"--mimic_cxr_root={tmp_path}", f"--mimic_ed_root={tmp_path}", f"--output={tmp_path / 'o'}"]
    one = min(os.sched_getaffinity(0))
    done = subprocess.run([sys.executable, "-c", code, *argv, *flags], capture_output=True, text=True, check=True,
                          preexec_fn=lambda: os.sched_setaffinity(0, {one}))
    assert done.stdout.split() == ["1", "in_memory"]


def test_worker_processes_run_our_entry_point_and_tear_down_their_dofns(tmp_path):
    """A local multi-process run's workers start as ``worker_main`` (which skips the interpreter's clean-up at exit)
    and still run every DoFn's teardown before they end; the job's output is complete."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    class Mark(beam.DoFn):  # defined here: pickled by value, so the worker needs no tests/ on its path
        def process(self, element):
            pid = os.getpid()
            (tmp_path / f"cmdline-{pid}").write_bytes(Path(f"/proc/{pid}/cmdline").read_bytes())
            yield element

        def teardown(self):
            (tmp_path / f"teardown-{os.getpid()}").touch()

    options = PipelineOptions(["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    with beam.Pipeline(runner=lw.LocalRunner(), options=options) as pipeline:
        _ = (pipeline | beam.Create(range(40)) | beam.Reshuffle() | beam.ParDo(Mark())
             | beam.combiners.Count.Globally()
             | beam.Map(lambda n, out=str(tmp_path / "count"): Path(out).write_text(str(n))))
    workers = {p.name.split("-")[1] for p in tmp_path.glob("cmdline-*")}
    assert workers and str(os.getpid()) not in workers
    for pid in workers:
        assert "local_workers.worker_main()" in (tmp_path / f"cmdline-{pid}").read_bytes().decode()
        assert (tmp_path / f"teardown-{pid}").exists()
    assert (tmp_path / "count").read_text() == "40"


END_CHILD = """
import atexit, os, sys, threading
from beam_pipeline import local_workers

class Loud:
    def __del__(self, write=os.write):  # runs in the interpreter's tear-down, which end_process skips
        write(1, b"torn down\\n")

kept = Loud()
atexit.register(lambda: open(sys.argv[1], "w").write("atexit ran"))
go = threading.Event()
threading.Thread(target=lambda: go.wait() and sys.stdout.write("thread done|")).start()  # not a daemon
sys.stdout.write("buffered|")  # a pipe: block-buffered, not yet written
go.set()
if sys.argv[2] == "end_process":
    local_workers.end_process()
"""


@pytest.mark.parametrize("ending", ["end_process", "interpreter"])
def test_end_process_does_what_the_interpreters_exit_does_but_its_tear_down(tmp_path, ending):
    """The command line's end (``python -m beam_pipeline.run`` and the demo): non-daemon threads joined, atexit
    handlers run, buffered output written, status 0; only the tear-down that would call ``__del__`` is skipped."""
    marker = tmp_path / "atexit"
    done = subprocess.run([sys.executable, "-c", END_CHILD, str(marker), ending], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert marker.read_text() == "atexit ran"
    torn_down = "" if ending == "end_process" else "torn down\n"
    assert sorted(done.stdout.removesuffix(torn_down).split("|")) == ["", "buffered", "thread done"]
    assert done.stdout.endswith(torn_down) and done.stderr == ""
