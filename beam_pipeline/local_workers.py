"""How many worker processes a local run starts when the user does not say: one per core the job may use, no more
than fit in its memory.

``os.cpu_count()`` is the host's count: inside a container limited to 2 CPUs on a 64-core host it says 64, and 64
workers of ~0.9 GB each would start. So the cores are the ones this process may run on (its affinity) capped by the
cgroup's CPU quota, and the workers by the memory the cgroup allows and the kernel reports available. Only the
job's own cgroup root is read (``/sys/fs/cgroup``: a container's own cgroup, v2 or v1), as loky and the JVM do.

The worker processes run ``worker_main`` (``LocalRunner``): Beam's SDK harness, then an exit that skips the
interpreter's clean-up. With torch, the encoder and the index loaded that clean-up takes 1-2 s a worker, and the
runner closes its workers one after another, so it was 2-4 s of a two-worker run's end (more with more cores).
The command line's launcher ends the same way once its job is done (``end_process``).
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import shlex
import sys
import threading
from pathlib import Path

from apache_beam.portability import python_urns
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

CGROUP_ROOT = Path("/sys/fs/cgroup")
# A worker process holds about 700-900 MB (torch, the MiniLM encoder, the retrieval index, OpenCV) and the runner
# about 450-650 MB plus ~75 KB a record (README, Performance): budgets a little above what was measured.
WORKER_BYTES = 1 << 30
RUNNER_BYTES = 768 << 20


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs the cgroup's quota allows (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``/``cfs_period_us``); None: no quota."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
    else:
        quota, period = (_read(root / "cpu" / name) for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us"))
    try:
        quota_us, period_us = int(quota), int(period)
    except (TypeError, ValueError):  # "max", missing files
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def memory_limit(root: Path = CGROUP_ROOT) -> int | None:
    """Bytes the cgroup may use (v2 ``memory.max``, v1 ``memory.limit_in_bytes``); None: no limit."""
    text = _read(root / "memory.max") or _read(root / "memory" / "memory.limit_in_bytes")
    return int(text) if text and text.isdigit() else None


def available_memory(meminfo: str, limit: int | None) -> int | None:
    """The kernel's estimate of memory available without swapping (``MemAvailable``), capped by the cgroup's limit
    (a v1 "no limit" is a huge number, which the cap ignores)."""
    kib = next((int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemAvailable:")), None)
    sizes = [size for size in (None if kib is None else kib * 1024, limit) if size is not None]
    return min(sizes) if sizes else None


def usable_cores(affinity: int, quota: float | None) -> int:
    return max(1, min(affinity, math.ceil(quota))) if quota else max(1, affinity)


def default_workers(cores: int, memory: int | None) -> int:
    """One worker per core, as many as the memory holds beside the runner (at least one)."""
    if memory is None:
        return cores
    return max(1, min(cores, (memory - RUNNER_BYTES) // WORKER_BYTES))


def machine() -> tuple[int, int, int | None]:
    """(default workers, usable cores, available bytes) for this process on this machine."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # macOS
    cores = usable_cores(affinity, cpu_quota())
    memory = available_memory(_read(Path("/proc/meminfo")) or "", memory_limit())
    return default_workers(cores, memory), cores, memory


# What Beam's FnApiRunner starts for a worker process (``--direct_running_mode=multi_processing``), and ours: the
# folder this package was imported from goes at the end of the worker's path, so the worker finds it wherever the
# launcher did (else it would exit at once, and Beam waits forever for a worker that never connects).
BEAM_WORKER_COMMAND = f"{sys.executable} -m apache_beam.runners.worker.sdk_worker_main"
WORKER_COMMAND = " ".join(shlex.quote(part) for part in (
    sys.executable, "-c", f"import sys; sys.path.append({str(Path(__file__).resolve().parents[1])!r}); "
                          "from beam_pipeline import local_workers; local_workers.worker_main()"))


class LocalRunner(FnApiRunner):
    """Beam's in-process FnApiRunner whose worker processes run ``worker_main``."""

    def run_via_runner_api(self, pipeline_proto, options):
        for environment in pipeline_proto.components.environments.values():
            if (environment.urn == python_urns.SUBPROCESS_SDK
                    and environment.payload == BEAM_WORKER_COMMAND.encode()):
                environment.payload = WORKER_COMMAND.encode()
        return super().run_via_runner_api(pipeline_proto, options)


def worker_main() -> None:
    """A local worker process: Beam's SDK harness until the runner closes it (its bundles done, its DoFns torn
    down), then ``os._exit``. A harness that fails raises as before (exit status 1, traceback)."""
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main(sys.argv)
    logging.shutdown()
    _exit_flushed()


def end_process() -> None:
    """End the command line's process as the interpreter would, minus its tear-down of every module and object
    (measured on the EPYC: 1.4 s for a launcher holding Beam, gRPC and matplotlib; 2.1-2.5 s when it ran the in-process
    worker, with torch and the encoder). What the interpreter's exit does first still happens, by the same CPython
    calls: threads that are not daemons are joined, ``atexit`` handlers run (logging's flush, temporary folders'
    removal, a user's own), the standard streams are flushed."""
    threading._shutdown()
    atexit._run_exitfuncs()
    _exit_flushed()


def _exit_flushed() -> None:
    """``os._exit`` after flushing stdout and stderr; 120 when that fails, as Python's own exit reports it."""
    status = 0
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe, a closed stream
            status = 120
    os._exit(status)
