"""How this package reaches Dataflow workers: a wheel built at submission time and staged with ``--extra_package``.

Why a wheel, and not ``--setup_file`` (checked against Beam 2.77's stager.py and the Python SDK container's
boot.go/piputil.go):

* ``--setup_file`` stages an **sdist** (``workflow.tar.gz``) that every worker installs with a plain
  ``pip install workflow.tar.gz``. Building an sdist needs its build backend (setuptools), and pip builds in an
  isolated environment that it fills **from PyPI**, so on workers without internet access (private IPs, no NAT,
  VPC-SC) the install fails, although the image already holds every dependency.
* A **wheel** passed as ``--extra_package`` is installed with ``pip install --upgrade --force-reinstall --no-deps``
  and then a plain ``pip install`` of the same file, which only checks that the dependencies are there. A wheel
  needs no build step, and the dependencies (``install_requires`` in setup.py) are already installed in the image,
  so neither step needs an index. The forced reinstall also means workers run exactly the code that was launched,
  even on an image built from an older commit.

The wheel is built offline (``pip wheel --no-deps --no-build-isolation --no-index``, with the setuptools already
installed where the job is launched) from a copy of the source tree, so the checkout is left untouched. The source
tree is the folder above the imported ``beam_pipeline`` package when it holds setup.py: a checkout or an editable
install (a launch from a laptop). The Flex Template image installs the package without its source tree; there the
launcher and the workers run the same image, hence the same code, and nothing is staged. Without a source tree and
without ``--sdk_container_image`` the workers would run Beam's stock image, which lacks this package: that is refused
at launch. With a source tree but without ``--sdk_container_image`` the launch goes ahead with a warning: the stock
image lacks the dependencies, so every worker installs each pinned one (torch included, gigabytes) from PyPI at every
start, and workers without internet access fail. A user who passes ``--setup_file`` or ``--extra_package(s)`` keeps
full control: nothing is added then.
"""

from __future__ import annotations

import atexit
import functools
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, WorkerOptions

import beam_pipeline

_LOGGER = logging.getLogger(__name__)
PROJECT_FILES = ("setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE")


class StagingError(RuntimeError):
    """The package could not be built for staging; the message says why and how to stage it yourself."""


def source_root() -> Path | None:
    """The folder holding setup.py next to the imported package, or None (installed from a wheel)."""
    root = Path(beam_pipeline.__file__).resolve().parents[1]
    return root if (root / "setup.py").is_file() else None


def build_wheel(root: Path, outdir: Path) -> Path:
    """Build this package's wheel from a copy of ``root`` into ``outdir``, without network access."""
    source = Path(tempfile.mkdtemp(prefix="src-", dir=outdir))
    for name in PROJECT_FILES:
        if (root / name).is_file():
            shutil.copy2(root / name, source / name)
    shutil.copytree(root / "beam_pipeline", source / "beam_pipeline",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = outdir / "dist"
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
               "--disable-pip-version-check", "--quiet", "--wheel-dir", str(wheels), str(source)]
    done = subprocess.run(command, capture_output=True, text=True)
    shutil.rmtree(source, ignore_errors=True)
    built = sorted(wheels.glob("*.whl"))
    if done.returncode != 0 or len(built) != 1:
        raise StagingError(
            f"could not build the package wheel to stage for the workers ({' '.join(command)} exited "
            f"{done.returncode}): {done.stderr.strip()[-2000:]}\nInstall setuptools where the job is launched, or "
            "stage the package yourself with --extra_package=<wheel> (or --setup_file=<setup.py>).")
    return built[0]


@functools.lru_cache(maxsize=None)
def _wheel_for(root: Path) -> Path:
    outdir = Path(tempfile.mkdtemp(prefix="beam-pipeline-wheel-"))
    atexit.register(shutil.rmtree, outdir, ignore_errors=True)  # staging has copied it by then
    return build_wheel(root, outdir)


def stage_package(options: PipelineOptions) -> str | None:
    """For a remote runner: add a freshly built wheel of this package as ``--extra_package`` unless the user chose
    how to stage code (``--setup_file``, ``--extra_package(s)``). Returns the wheel's path, or None."""
    setup = options.view_as(SetupOptions)
    if setup.setup_file or setup.extra_packages:
        _LOGGER.info("not staging beam_pipeline: --setup_file/--extra_package given")
        return None
    root = source_root()
    image = options.view_as(WorkerOptions).sdk_container_image
    if root is None:
        if not image:
            raise StagingError(
                f"beam_pipeline is installed without its source tree ({Path(beam_pipeline.__file__).parent}) and no "
                "--sdk_container_image is given, so Dataflow workers would run Beam's stock image, which lacks this "
                "package: pass --sdk_container_image=<the project's image>, or --extra_package=<wheel>.")
        _LOGGER.info("beam_pipeline is installed without its source tree; workers run the copy in %s", image)
        return None
    if not image:
        _LOGGER.warning(
            "no --sdk_container_image: Dataflow workers run Beam's stock image, which lacks this package's "
            "dependencies, so every worker installs each one pinned in setup.py (torch, transformers, faiss, ...; "
            "gigabytes) from PyPI at every start, and workers without internet access fail to start. Build the "
            "project's image with templates/build.sh and pass --sdk_container_image=<the image it printed>.")
    wheel = _wheel_for(root)
    setup.extra_packages = [str(wheel)]
    _LOGGER.info("staging %s for the workers (--extra_package)", wheel.name)
    return str(wheel)
