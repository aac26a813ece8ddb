"""``make demo`` as the README shows it: ``python -m beam_pipeline.demo`` with no flags, in a fresh folder, prints
exactly the funnel the README quotes; a second run reuses the knowledge base and writes the same bytes."""

from __future__ import annotations

import filecmp
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_demo_output() -> list[str]:
    """The README's demo output block, its annotation of the knowledge-base line left out."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```\n(Sample MIMIC tree: .*?)```", text, re.S).group(1)
    return [re.sub(r"\s+\(first run.*\)$", "", line) for line in block.splitlines()]


def demo(cwd: Path) -> list[str]:
    done = subprocess.run([sys.executable, "-m", "beam_pipeline.demo"], cwd=cwd, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = re.search(r"/runs/(\w+)", done.stdout).group(1)
    return done.stdout.replace(str(cwd / ".demo"), "/…/.demo").replace(run_id, "<run id>").splitlines()


def test_the_demo_prints_the_readme_funnel_and_reruns_to_the_same_bytes(tmp_path):
    first = demo(tmp_path)
    assert first == readme_demo_output()
    published = (tmp_path / ".demo" / "output" / "LATEST").read_text().strip()
    kept = tmp_path / "first-run"
    (tmp_path / ".demo" / "output" / published).rename(kept)

    second = demo(tmp_path)
    assert second == [line for line in first if not line.startswith("Knowledge base:")]  # the index is reused
    again = tmp_path / ".demo" / "output" / (tmp_path / ".demo" / "output" / "LATEST").read_text().strip()
    shards = sorted(str(p.relative_to(kept)) for p in kept.glob("*/*-of-*"))
    assert len(shards) > 3
    match, mismatch, errors = filecmp.cmpfiles(kept, again, shards, shallow=False)
    assert (mismatch, errors) == ([], [])
