"""The end-to-end benchmark measures a whole process tree and runs the pipeline on a tiny sample (timings are not
asserted: they live in the benchmark's output and the README's performance section)."""

import json
import re
import sys
import textwrap

from beam_pipeline import bench_e2e

# A parent that starts two children, each holding ~150 MB and burning CPU, and waits for them. The children keep
# their memory for 2.5 s, more than two of the monitor's 1 s PSS sampling intervals, so a PSS sample always falls
# while both hold it (RSS is sampled every 0.05 s here).
TREE = textwrap.dedent("""
    import subprocess, sys, time
    if sys.argv[1:] == ["leaf"]:
        block = bytearray(150 * 2 ** 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        end = time.process_time() + 0.4
        while time.process_time() < end:
            pass
        time.sleep(2.5)
    else:
        leaves = [subprocess.Popen([sys.executable, __file__, "leaf"]) for _ in range(2)]
        for leaf in leaves:
            leaf.wait()
""")


def test_measure_sums_the_whole_tree(tmp_path):
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    m = bench_e2e.measure([sys.executable, str(script)], tmp_path / "log.txt", interval=0.05)
    assert m["returncode"] == 0
    assert m["peak_rss_mb"] > 2 * 150  # both leaves at once: the sum, not one process's maximum
    assert m["peak_pss_mb"] > 2 * 140
    assert m["peak_processes"] == 3
    assert m["cpu_s"] >= 0.8 and abs(m["cpu_s"] - m["cpu_s_proc"]) < 0.5
    assert m["wall_s"] >= 0.9
    assert 0 <= m["host_steal_share"] < 1 and 0 <= m["host_idle_share"] < 1


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
