"""Helpers for the fault suite (tests/test_faults_*.py): one fault on a fresh copy of a small sample tree, the job
run the way users run it, and the checks every faulty run must still pass (the counts add up, rejects are lines).

    roots = fresh_tree(clean_tree, tmp_path)          # a private copy of the session's sample tree
    edit_table(roots.cxr, mimic.CXR_METADATA, lambda text: text.replace(...))  # inject the fault
    metadata = run_job(roots, tmp_path / "out")       # in-process run; raises what the job raises
    done = run_cli(roots, tmp_path / "out", "--views=ap,pa")  # the CLI in a fresh interpreter: exit code, stderr
    assert_counts_add_up(metadata, tmp_path / "out")
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

from beam_pipeline import mimic, sample
from beam_pipeline.fileio.metadata import check_counts
from beam_pipeline.run import run
from conftest import OFFLINE_TEXT, ONE_WORKER, published

SUBJECTS, SEED = 24, 11
# Fast flags for fault runs: small images, no retrieval (faults are about inputs, not text models), one worker.
FAST = (OFFLINE_TEXT, ONE_WORKER, "--image_size=32", "--kb_index=none")


def make_clean_tree(folder: Path) -> sample.SampleRoots:
    return sample.generate(folder, subjects=SUBJECTS, seed=SEED)


def fresh_tree(clean: sample.SampleRoots, tmp_path: Path) -> sample.SampleRoots:
    """A private copy of the clean tree (the three roots share one parent folder)."""
    source = Path(clean.cxr).parent
    target = tmp_path / "tree"
    shutil.copytree(source, target)
    return sample.SampleRoots(*(str(target / Path(root).relative_to(source))
                                for root in (clean.cxr, clean.ed, clean.iv)))


def table_path(root: str, table: mimic.Table) -> Path:
    folder = Path(root) / table.subdir if table.subdir else Path(root)
    return next(folder / (table.basename + ext) for ext in (".csv.gz", ".csv")
                if (folder / (table.basename + ext)).exists())


def read_table_bytes(root: str, table: mimic.Table) -> bytes:
    path = table_path(root, table)
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()


def write_table_bytes(root: str, table: mimic.Table, data: bytes) -> Path:
    """Replace the table's file with ``data`` (gzipped again when the file is .csv.gz)."""
    path = table_path(root, table)
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def edit_table(root: str, table: mimic.Table, edit: Callable[[bytes], bytes]) -> Path:
    return write_table_bytes(root, table, edit(read_table_bytes(root, table)))


def argv(roots: sample.SampleRoots, output: Path, *flags: str) -> list[str]:
    return [f"--mimic_cxr_root={roots.cxr}", f"--mimic_ed_root={roots.ed}", f"--mimic_iv_root={roots.iv}",
            f"--output={output}", *FAST, *flags]


def run_job(roots: sample.SampleRoots, output: Path, *flags: str) -> dict:
    """Run in this process (as run.run does for the CLI) and return metadata.json."""
    return run(argv(roots, output, *flags))


def run_cli(roots: sample.SampleRoots, output: Path, *flags: str) -> subprocess.CompletedProcess:
    """``python -m beam_pipeline.run`` in a fresh interpreter, as users call it: exit code, stdout and stderr."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "beam_pipeline.run", *argv(roots, output, *flags)],
                          capture_output=True, text=True, env=env, timeout=900)


def rejects(output: Path) -> list[dict]:
    return [json.loads(line) for path in sorted((published(output) / "rejects").glob("*.jsonl"))
            for line in path.open()]


def assert_counts_add_up(metadata: dict, output: Path) -> None:
    """Every funnel identity holds and the rejects files hold exactly rejects_total lines."""
    counts = metadata["counts"]
    assert check_counts(counts, metadata["outputs"], metadata["config"]["within_ed_stay"]) == []
    assert len(rejects(output)) == counts["rejects_total"]
