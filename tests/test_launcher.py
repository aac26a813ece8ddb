"""The Flex Template launcher starts: the file the Dockerfile's FLEX_TEMPLATE_PYTHON_PY_FILE names is run as a script
in a fresh interpreter, from the folder the image puts it in, with the image's ENV and another working directory
(as the template launcher runs it), and nothing of the package can be imported under a standard-library name.

The image's launcher folder is rebuilt from the Dockerfile's COPY lines in a temporary directory, so the script sees
the same first sys.path entry as in the image; beam_pipeline then comes from its installed distribution (editable
in the venv, site-packages in the image), never from beside the launcher.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import os
import posixpath
import shutil
import subprocess
import sys
from pathlib import Path

from beam_pipeline import mimic, options, sample
from beam_pipeline.readers.common import load_metadata
from conftest import OFFLINE_TEXT
from dockerfile import parse

ROOT = Path(__file__).resolve().parents[1]
IMAGE = parse(ROOT / "Dockerfile")
ENTRY = IMAGE.env["FLEX_TEMPLATE_PYTHON_PY_FILE"]
LAUNCHER_FOLDER = posixpath.dirname(ENTRY)


def image_folder(tmp_path: Path) -> Path:
    """The launcher's folder as the image has it (every file COPY puts below it), rebuilt under tmp_path; returns
    the launcher's path in that copy."""
    for image_path, source in IMAGE.under(LAUNCHER_FOLDER).items():
        target = tmp_path / "image" / image_path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return tmp_path / "image" / ENTRY.lstrip("/")


def launch(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``python FLEX_TEMPLATE_PYTHON_PY_FILE args`` in a fresh interpreter, cwd elsewhere, the image's ENV added
    (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE: no model download is possible)."""
    launcher = image_folder(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    env = {**os.environ, **IMAGE.env, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, str(launcher), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_the_launcher_is_a_repository_file_copied_alone_into_its_folder():
    assert ENTRY in IMAGE.files, f"no COPY puts a file at {ENTRY}"
    assert IMAGE.files[ENTRY] == ROOT / "launcher.py"
    python_files = {path for path in IMAGE.under(LAUNCHER_FOLDER) if path.endswith(".py")}
    assert python_files == {ENTRY}


def test_the_package_is_installed_from_a_folder_off_the_launchers_path():
    package = {path for path, source in IMAGE.files.items() if "beam_pipeline" in source.relative_to(ROOT).parts}
    assert package and not any(path.startswith(LAUNCHER_FOLDER + "/") for path in package)
    installs = [line for line in IMAGE.run_lines() if "pip install" in line]
    assert any(" --no-deps ." in line for line in installs)
    assert not any(" -e " in f" {line} " or "--editable" in line for line in installs)


def test_no_module_or_package_has_a_standard_library_name():
    names = {}
    for path in sorted((ROOT / "beam_pipeline").rglob("*")):
        if path.suffix == ".py" and path.stem not in ("__init__", "__main__"):
            names[path.stem] = path
        elif path.is_dir() and path.name != "__pycache__":
            names[path.name] = path
    names.update({path.stem: path for path in ROOT.glob("*.py")})  # launcher.py, setup.py
    assert {"run", "fileio", "show", "transforms", "launcher"} <= set(names)
    clashes = {name: str(path.relative_to(ROOT)) for name, path in names.items() if name in sys.stdlib_module_names}
    assert not clashes


def test_help_lists_the_pipeline_flags(tmp_path):
    done = launch(tmp_path, "--help")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    for field in dataclasses.fields(options.Config):
        assert f"--{field.name}" in done.stdout


def test_a_local_run_through_the_launcher_writes_a_complete_output(tmp_path):
    roots = sample.generate(tmp_path / "sample", subjects=12, seed=5)
    output = tmp_path / "output"
    done = launch(tmp_path, f"--mimic_cxr_root={roots.cxr}", f"--mimic_ed_root={roots.ed}",
                  f"--mimic_iv_root={roots.iv}", f"--output={output}", OFFLINE_TEXT)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = load_metadata(str(output))["counts"]
    with gzip.open(Path(roots.cxr, mimic.CXR_METADATA.subdir, mimic.CXR_METADATA.filename), "rt", newline="") as f:
        rows = sum(1 for _ in csv.DictReader(f))
    assert counts["images_total"] == rows > 0
    assert counts["images_total"] == counts["images_unreadable"] + counts["images_other_view"] + \
        counts["images_kept_view"]
    assert counts["images_kept_view"] == counts["matched"] + counts["no_ed_stay"] + counts["rejected"]
    assert counts["matched"] == sum(counts["per_split"].values()) > 0
    assert f"Output: {output}" in done.stdout
