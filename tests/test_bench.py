"""The benchmark runs end to end and prints its ratios and memory (timings are not asserted: they live in the
benchmark's output and the README's performance section)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from beam_pipeline import bench


def test_bench_prints_ratio_and_peak_rss(tmp_path, capsys, kb_index):
    bench.main([f"--workdir={tmp_path}", "--pool=2", "--sizes=3,6", "--seconds=0.01", "--image_size=64",
                "--notes=40", f"--kb_index={kb_index}"])
    out = capsys.readouterr().out
    assert re.search(r"raw full-resolution decode\s+[\d.]+ images/s", out)
    assert re.search(r"image stage, per image\s+[\d.]+ images/s\s+ratio [\d.]+", out)
    runs = re.findall(r"image stage in Beam,\s+([\d,]+) imgs\s+[\d.]+ images/s\s+ratio [\d.]+\s+peak RSS\s+(\d+) MB",
                      out)
    assert [n for n, _ in runs] == ["3", "6"] and all(int(rss) > 50 for _, rss in runs)
    assert len(list((tmp_path / "tree").rglob("*.jpg"))) == 6  # symlinks into the pool, not copies
    assert re.search(r"raw embedding forward pass\s+[\d.]+ notes/s", out)
    assert re.search(r"filter \+ tokenise \+ retrieve\s+[\d.]+ notes/s\s+ratio [\d.]+", out)


def test_a_child_reports_its_own_peak_rss():
    """The Beam runs are children of a process holding the text models; Linux carries ``ru_maxrss`` over the spawn,
    so a child reported its parent's ~1 GB. ``peak_rss_mb`` is the child's own."""
    ballast = np.ones(600 * 2**20 // 8)  # 600 MB touched in this process
    code = "import resource; from beam_pipeline import bench; " \
           "print(bench.peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    own, carried = float(out[0]), float(out[1])
    assert ballast.all() and own < 400 and carried > 600


def test_gcs_bench_reads_through_the_emulator_and_writes_the_same_files_in_every_configuration(tmp_path):
    """``python -m beam_pipeline.bench_gcs`` as ``make bench`` runs it (a child process that starts its own emulator
    child on loopback): local files and GCS objects, with latency and read-ahead, give byte-identical TFRecords."""
    out = subprocess.run([sys.executable, "-m", "beam_pipeline.bench_gcs", f"--workdir={tmp_path}", "--records=6",
                          "--pool=2", "--latency_ms=0,20", "--read_ahead=0,3"], check=True, capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parents[1], timeout=600).stdout
    names = re.findall(r"^  (local|gcs \d+ ms, read-ahead \d+)\s+[\d.]+ images/s\s+[\d.]+ ms CPU per image", out,
                       re.MULTILINE)
    assert names == ["local", "gcs 0 ms, read-ahead 0", "gcs 0 ms, read-ahead 3", "gcs 20 ms, read-ahead 0",
                     "gcs 20 ms, read-ahead 3"]
    assert "TFRecords byte-identical in every configuration: yes" in out
    summary = json.loads((tmp_path / "gcs-bench" / "summary.json").read_text())
    assert summary["identical_files"] and len({r["files_sha256"] for r in summary["runs"].values()}) == 1
