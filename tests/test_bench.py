"""The benchmark runs end to end and prints its ratios and memory (timings are not asserted: they live in the
benchmark's output and the README's performance section)."""

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
