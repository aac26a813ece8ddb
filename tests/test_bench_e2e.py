"""The end-to-end benchmark measures a whole process tree and runs the pipeline on a tiny sample (timings are not
asserted: they live in the benchmark's output and the README's performance section)."""

import json
import os
import re
import subprocess
import sys
import textwrap

from beam_pipeline import bench_e2e

# A parent that starts two leaves, each touching ~150 MB and burning 0.4 s of CPU, then holding both until released.
# Nothing is timed: each leaf says "ready" on its stdout once it holds its memory and has burnt its CPU, the parent
# writes "ready" to the first FIFO once both have, and releases them (closes their stdin) once the second FIFO says go.
TREE = textwrap.dedent("""
    import subprocess, sys, time
    if sys.argv[1:] == ["leaf"]:
        block = bytearray(150 * 2 ** 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        end = time.process_time() + 0.4
        while time.process_time() < end:
            pass
        print("ready", flush=True)
        sys.stdin.read()  # until the parent closes it
    else:
        ready, go = sys.argv[1:]
        leaves = [subprocess.Popen([sys.executable, __file__, "leaf"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                  for _ in range(2)]
        assert [leaf.stdout.readline() for leaf in leaves] == [b"ready\\n"] * 2
        with open(ready, "w") as f:
            f.write("ready")
        with open(go) as f:
            f.read()
        for leaf in leaves:
            leaf.stdin.close()
            leaf.wait()
""")

# In a fresh process (so the monitored tree is exactly the three processes above, whatever else pytest has
# started, and pytest itself does not become a subreaper): measure() of the tree, its monitor made to wait, at its
# first sample, for the tree's "ready", then to take one full sample (process rescan and PSS) while both leaves hold
# their memory, and only then to release the tree.
MEASURE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from beam_pipeline import bench_e2e

    tree, ready, go, log = sys.argv[1:]

    class Synchronised(bench_e2e.TreeMonitor):
        released = False

        def sample(self):
            if not self.released:
                with open(ready) as f:
                    f.read()
                self._last_scan = self._last_pss = float("-inf")  # this sample rescans the tree and reads PSS
                super().sample()
                with open(go, "w") as f:
                    f.write("go")
                self.released = True
            else:
                super().sample()

    bench_e2e.TreeMonitor = Synchronised
    print(json.dumps(bench_e2e.measure([sys.executable, tree, ready, go], Path(log), interval=0.05)))
""")


def test_measure_sums_the_whole_tree(tmp_path):
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    ready, go = tmp_path / "ready", tmp_path / "go"
    os.mkfifo(ready)
    os.mkfifo(go)
    done = subprocess.run([sys.executable, "-c", MEASURE, str(script), str(ready), str(go), str(tmp_path / "log.txt")],
                          capture_output=True, text=True, timeout=60)  # a bound, not a wait
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads(done.stdout.splitlines()[-1])
    assert m["returncode"] == 0
    assert m["peak_rss_mb"] > 2 * 150  # both leaves at once: the sum, not one process's maximum
    assert m["peak_pss_mb"] > 2 * 140
    assert m["peak_processes"] == 3
    # The leaves burnt 0.4 s each before the monitor's full sample, and nothing after: the CPU seen per process and
    # the tree's rusage agree (up to the start-up and exit of three interpreters).
    assert m["cpu_s"] >= 0.8 and abs(m["cpu_s"] - m["cpu_s_proc"]) < 0.5
    assert m["wall_s"] >= 0.4  # each leaf's 0.4 s of CPU took at least as long
    assert m["host_steal_share"] >= 0 and m["host_idle_share"] >= 0
    assert m["host_steal_share"] + m["host_idle_share"] <= 1  # two shares of the same ticks


def test_host_shares_come_from_the_ticks_between_two_readings():
    before = [100, 0, 50, 1000, 10, 0, 5, 20]  # user nice system idle iowait irq softirq steal
    after = [250, 0, 80, 1100, 30, 0, 5, 40]   # +150 +0 +30 +100 +20 +0 +0 +20: 320 ticks
    shares = bench_e2e.host_shares(before, after)
    assert shares == {"idle": 120 / 320, "steal": 20 / 320}
    ticks = bench_e2e.host_cpu_ticks()
    assert len(ticks) == 8 and all(t >= 0 for t in ticks) and sum(ticks) > 0


def test_end_to_end_bench_on_a_tiny_sample(tmp_path, capsys, kb_index):
    bench_e2e.main([f"--workdir={tmp_path}", "--records=8,16", "--workers=1", "--image_size=small",
                    "--seconds=0.01", "--notes=8", "--pool=2", f"--kb_index={kb_index}"])
    out = capsys.readouterr().out
    rows = re.findall(r"^\s+(\d+)\s+1\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+(\d+)\s+(\d+)\s+1\s", out, re.M)
    assert len(rows) == 2 and all(int(rss) > 100 for _, rss, _ in rows)
    assert re.search(r"raw full-resolution JPEG decode [\d.]+ img/s", out)
    assert re.search(r"raw embedding [\d.]+ notes/s", out)
    assert re.search(r"peak tree RSS, largest / smallest size \(1 worker\)\s+[\d.]+\s+target <= 1.25", out)
    summary = json.loads((tmp_path / "e2e" / "summary.json").read_text())
    runs = summary["runs"]
    assert [r["workers"] for r in runs] == [1, 1] and runs[0]["records"] < runs[1]["records"]
    for r in runs:
        assert r["records"] > 0 and r["cpu_s"] > 0 and r["wall_s"] > 0 and r["peak_rss_mb"] > 100
        assert r["records_per_s"] > 0 and r["cpu_ms_per_record"] > 0 and r["image_stage_per_busy_s"] > 0
        assert any("TokenizeAndRetrieve" in s["stage"] for s in r["stages"])
    assert set(summary["targets"]) >= {"rss_growth_1_worker", "cpu_ms_per_record_1_worker", "image_vs_decode"}
    assert summary["limits"]["raw_decode_per_s"] > 0 and summary["limits"]["raw_embed_per_s"] > 0


def test_repeats_interleave_the_worker_counts_within_each_size():
    assert bench_e2e.run_order([500, 2000], [0, 1], 2) == [
        (500, 0, 0), (500, 0, 1), (500, 1, 0), (500, 1, 1), (2000, 0, 0), (2000, 0, 1), (2000, 1, 0), (2000, 1, 1)]
    assert bench_e2e.run_order([500], [0, 1], 1) == [(500, 0, 0), (500, 0, 1)]


def _run(records_target, repeat, workers, wall, cpu_ms, rss, records):
    return {"records_target": records_target, "repeat": repeat, "workers": workers, "records": records,
            "wall_s": wall, "pipeline_s": wall - 2, "cpu_ms_per_record": cpu_ms, "cpu_s": cpu_ms * records / 1000,
            "peak_rss_mb": rss, "peak_pss_mb": rss * 0.8, "image_stage_per_busy_s": 30.0 + repeat,
            "machine_speedup_before": 1.9, "stages": []}


def test_targets_over_repeats_are_medians_and_the_speed_up_pairs_runs_by_repeat():
    # one worker drifts 100 -> 140 s over three repeats; the paired two-worker runs drift alike
    runs = [_run(500, i, 1, 30.0, 70.0, 700, 499) for i in range(3)] + \
           [_run(500, i, 2, 20.0, 90.0, 1500, 499) for i in range(3)] + \
           [_run(2000, i, 1, wall, 50.0 + i, 800, 2054) for i, wall in enumerate((100.0, 120.0, 140.0))] + \
           [_run(2000, i, 2, wall, 60.0 - i, 1800, 2054) for i, wall in enumerate((50.0, 80.0, 70.0))]
    targets = bench_e2e.check_targets(runs, {"raw_decode_per_s": 40.0}, [500, 2000])
    speedup = targets["speedup_2000"]
    assert speedup["pairs"] == [2.0, 1.5, 2.0] and speedup["value"] == 2.0 and speedup["met"]
    assert targets["speedup_500"]["value"] == 1.5 and not targets["speedup_500"]["met"]
    assert targets["cpu_ms_per_record"]["value"] == 59.0 and targets["cpu_ms_per_record"]["runs"] == [60, 59, 58]
    assert targets["cpu_ms_per_record_1_worker"]["value"] == 51.0
    assert targets["rss_growth"]["value"] == 1.2 and targets["rss_growth"]["met"]
    assert targets["image_vs_decode"]["value"] == 31.0 / 40.0
    summary = {"date": "2026-12-02", "cores": 2, "python": "3.11", "git": "x", "runs": runs, "targets": targets,
               "limits": {"raw_decode_per_s": 40.0, "jpegs": 8, "mean_jpeg_mb": 1.4, "image_stage_per_s": 38.0,
                          "raw_embed_per_s": 100.0, "text_stage_per_s": 50.0}}
    for r in runs:
        r.update(records_per_s=1.0, loadavg_1m_before=0.0, host_steal_share=0.0, peak_processes=3)
    assert re.search(r"1 -> 2 workers, 2000 records\s+2\.00\s+target >= 1\.6: met.*median of 3: 2\.00, 1\.50, 2\.00",
                     bench_e2e.table(summary))


def test_with_several_parallel_worker_counts_each_repeat_pairs_one_worker_with_the_first_listed():
    runs = [_run(500, i, w, wall, 60.0, 1000, 499) for i in range(2) for w, wall in ((2, 10.0), (1, 30.0), (3, 7.5))]
    assert bench_e2e.check_targets(runs, {}, [500])["speedup_500"]["pairs"] == [3.0, 3.0]


def test_processes_are_told_apart_by_their_command_lines():
    import shlex

    from beam_pipeline import local_workers

    def cmdline(command: str) -> bytes:
        return b"\0".join(part.encode() for part in shlex.split(command)) + b"\0"

    assert bench_e2e.role_of(cmdline(local_workers.WORKER_COMMAND)) == "worker"  # what LocalRunner starts
    assert bench_e2e.role_of(cmdline(local_workers.BEAM_WORKER_COMMAND)) == "worker"
    assert bench_e2e.role_of(b"/bin/sh\0-c\0" + local_workers.WORKER_COMMAND.encode() + b"\0") == "shell"
    assert bench_e2e.role_of(cmdline(f"{sys.executable} -m beam_pipeline.bench_e2e --child=t.json -- --x")) == "job"


READER = "import sys\nwith open(sys.argv[1], 'rb') as f:\n    while f.read(1 << 20):\n        pass\n"


def test_a_run_counts_what_it_read_from_storage_and_warming_the_page_cache_leaves_it_none(tmp_path):
    sample = tmp_path / "sample" / "files"
    sample.mkdir(parents=True)
    data = sample / "images.bin"
    with open(data, "wb") as f:
        f.write(os.urandom(8 << 20))
        f.flush()
        os.fsync(f.fileno())  # clean pages, which the kernel drops on request
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    (sample.parent / "small.csv").write_text("a,b\n1,2\n")
    read = [sys.executable, "-c", READER, str(data)]
    cold = bench_e2e.measure(read, tmp_path / "cold.txt", interval=0.01)
    assert cold["returncode"] == 0 and cold["disk_read_mb"] >= 7  # the 8 MB came from storage
    warmed = bench_e2e.warm_page_cache(sample.parent)
    assert warmed["files"] == 2 and warmed["mb"] == (8 << 20) / 2 ** 20 + 8 / 2 ** 20
    warm = bench_e2e.measure(read, tmp_path / "warm.txt", interval=0.01)
    assert warm["returncode"] == 0 and warm["disk_read_mb"] < 1
