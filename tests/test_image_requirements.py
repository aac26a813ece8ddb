"""The image's requirement set (requirements.txt, which the Dockerfile installs) against what a job really imports.

No image can be built here, so the test builds the image's site-packages instead: a folder of links to exactly the
installed distributions in the dependency closure of requirements.txt (extras and markers honoured), plus this
package. A fresh, offline interpreter that sees only that folder and the standard library (``python -S`` +
``site.addsitedir``) then does what the image and a job do: it runs every import statement of every beam_pipeline
module reachable from the launcher (beam_pipeline.run) and from the image's build step (beam_pipeline.kb), including
the lazy ones inside functions and DoFn.setup (tokenizer, embedding model, FAISS, GCS client, matplotlib); builds the
knowledge-base index as the Dockerfile does; runs a local job with images and retrieval over a generated sample (the
launcher's local path, data card included); and imports what the launcher submits to Dataflow with and what workers
boot. Packages that libraries import only when present (torch's optree and opt_einsum, Beam's absl, transformers'
psutil; all pulled in by TensorFlow in the dev venv) are absent there, as in the image. Each module it ends up holding
is mapped to the distribution whose files contain it.
"""

from __future__ import annotations

import ast
import collections
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from beam_pipeline import cohorts, sample
from conftest import ONE_WORKER, OFFLINE_TEXT
from dockerfile import parse

ROOT = Path(__file__).resolve().parents[1]
SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])
# The launcher's import, the image build's kb step, and the cohort modules run.py imports by name (cohorts.get).
ENTRY_MODULES = ("beam_pipeline.run", "beam_pipeline.kb",
                 *sorted({f"beam_pipeline.cohorts.{module}" for module in cohorts.MODULES.values()}))
DISTRIBUTION = "mimic-cxr-ed-beam"
# Known dev/user-side tools that must never reach the image.
DEV_ONLY = {"pytest", "gcp-storage-emulator", "python-hcl2", "tensorflow-datasets", "tensorflow-cpu", "tensorflow",
            "google-api-python-client"}
# Top-level runtime requirements the run-time path does not import, each with its reason. None at present.
NOT_IMPORTED_AT_RUN_TIME: dict[str, str] = {}

PROBE = textwrap.dedent("""
    import importlib, json, site, sys
    args = json.loads(sys.argv[1])
    site.addsitedir(args["site"])  # the image's site-packages; its .pth files run as they would there
    baseline = set(sys.modules)
    resolved = []
    for module, names in args["imports"]:
        for name in names or [None]:
            try:
                resolved.append(importlib.import_module(f"{module}.{name}" if name else module).__name__)
            except ModuleNotFoundError as err:
                if name is None or err.name != f"{module}.{name}":
                    raise
                resolved.append(importlib.import_module(module).__name__)  # `from module import attribute`
    from beam_pipeline import kb, run
    kb.build(args["kb_index"])
    for flags in args["flags"]:  # one job per cohort
        run.main(flags)
    for name in ("apache_beam.runners.dataflow.dataflow_runner", "apache_beam.runners.worker.sdk_worker_main",
                 "apache_beam.io.gcp.gcsio"):
        importlib.import_module(name)
    loaded = {name: getattr(module, "__file__", None) for name, module in list(sys.modules.items())
              if name not in baseline}
    with open(args["report"], "w") as f:
        json.dump({"loaded": loaded, "direct": sorted(set(resolved))}, f)
""")


def requirement_lines(path: Path) -> list[Requirement]:
    """The requirements of a pip requirements file, following ``-r`` includes."""
    result = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r"):
            result += requirement_lines(path.parent / line[2:].strip())
        elif line and not line.startswith("-"):
            result.append(Requirement(line))
    return result


RUNTIME = requirement_lines(ROOT / "requirements.txt")
DEV = requirement_lines(ROOT / "requirements-dev.txt")
DEV_TOOLS = {canonicalize_name(r.name) for r in DEV} - {canonicalize_name(r.name) for r in RUNTIME}


def installed(name: str) -> importlib.metadata.Distribution:
    """The distribution installed in site-packages (not, say, an egg-info left in the checkout)."""
    return next(importlib.metadata.distributions(name=name, path=[str(SITE_PACKAGES)]))


def closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution the requirements pull in, by the installed distributions' metadata."""
    extras: dict[str, set[str]] = {}
    todo = list(requirements)
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in extras and set(requirement.extras) <= extras[name]:
            continue
        extras[name] = extras.get(name, set()) | set(requirement.extras)
        for line in installed(name).requires or []:
            dependency = Requirement(line)
            if dependency.marker is None or \
                    any(dependency.marker.evaluate({"extra": extra}) for extra in extras[name] | {""}):
                todo.append(dependency)
    return set(extras)


def installed_files() -> dict[str, set[tuple[str, ...]]]:
    """Distribution -> the parts of each of its files' paths relative to site-packages (RECORD), for every installed
    distribution (files outside site-packages, such as scripts in bin/, left out)."""
    result: dict[str, set[tuple[str, ...]]] = {}
    for dist in importlib.metadata.distributions(path=[str(SITE_PACKAGES)]):
        paths = result.setdefault(canonicalize_name(dist.metadata["Name"]), set())
        paths.update(tuple(f.parts) for f in dist.files or [] if f.parts[0] != "..")
    return result


def image_site(target: Path, keep: set[str], files: dict[str, set[tuple[str, ...]]]) -> Path:
    """A site folder holding only the distributions in ``keep``: a link to each site-packages entry that only they
    own, a real folder (recursively) where they share one with others (a namespace package such as google/)."""
    owners: dict[tuple[str, ...], set[str]] = collections.defaultdict(set)
    children: dict[tuple[str, ...], set[tuple[str, ...]]] = collections.defaultdict(set)
    for name, paths in files.items():
        for parts in paths:
            for depth in range(1, len(parts) + 1):
                owners[parts[:depth]].add(name)
                children[parts[:depth - 1]].add(parts[:depth])
    target.mkdir()
    todo = [()]
    while todo:
        for child in children[todo.pop()]:
            if owners[child] <= keep:
                target.joinpath(*child).symlink_to(SITE_PACKAGES.joinpath(*child))
            elif owners[child] & keep:
                target.joinpath(*child).mkdir()
                todo.append(child)
    return target


def runtime_modules() -> dict[str, tuple[ast.Module, str]]:
    """beam_pipeline modules reachable from ENTRY_MODULES through any import statement (lazy ones included):
    name -> (syntax tree, package for relative imports)."""
    found: dict[str, tuple[ast.Module, str]] = {}
    todo = list(ENTRY_MODULES)
    while todo:
        name = todo.pop()
        folder = ROOT.joinpath(*name.split("."))
        path = folder / "__init__.py" if folder.is_dir() else folder.with_suffix(".py")
        if name in found or not path.is_file():
            continue  # seen, or an attribute (`from beam_pipeline import x` names modules and attributes alike)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        found[name] = (tree, package)
        for module, names in imports(tree, package):
            if module.partition(".")[0] == "beam_pipeline":
                todo += [module, *(f"{module}.{n}" for n in names)]
    return found


def imports(tree: ast.Module, package: str) -> list[tuple[str, list[str]]]:
    """(module, names imported from it; [] for ``import module``) for every import statement, at any depth."""
    result = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            result += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            module = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level \
                else node.module
            result.append((module, [alias.name for alias in node.names]))
    return result


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """Run PROBE against the image's site folder; (the finished process, {module: its distribution}, the
    distributions beam_pipeline imports directly)."""
    base = tmp_path_factory.mktemp("image-requirements")
    files = installed_files()
    site = image_site(base / "site", closure(RUNTIME) | {DISTRIBUTION}, files)
    roots = sample.generate(base / "sample", subjects=10, seed=11)
    statements = [(module, names) for tree, package in runtime_modules().values()
                  for module, names in imports(tree, package)
                  if module.partition(".")[0] not in sys.stdlib_module_names]
    args = {"site": str(site), "imports": statements, "kb_index": str(base / "kb"),
            "report": str(base / "report.json"),
            "flags": [[f"--mimic_cxr_root={roots.cxr}", f"--mimic_ed_root={roots.ed}", f"--mimic_iv_root={roots.iv}",
                       f"--output={base / 'output'}", OFFLINE_TEXT, ONE_WORKER, f"--kb_index={base / 'kb'}"],
                      [f"--cohort=symile_mimic", f"--mimic_cxr_root={roots.cxr}", f"--mimic_iv_root={roots.iv}",
                       f"--mimic_ecg_root={roots.ecg}", f"--output={base / 'symile'}", ONE_WORKER],
                      [f"--cohort=medfuse_ihm", f"--mimic_cxr_root={roots.cxr}", f"--mimic_iv_root={roots.iv}",
                       f"--output={base / 'medfuse'}", ONE_WORKER]]}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLCONFIGDIR": str(base / "mpl")}
    done = subprocess.run([sys.executable, "-S", "-c", PROBE, json.dumps(args)], cwd=base, env=env,
                          capture_output=True, text=True, timeout=900)
    if done.returncode:
        return done, {}, set()
    report = json.loads((base / "report.json").read_text())
    owner = {parts: name for name, paths in files.items() for parts in paths}
    loaded = {}
    for name, file in report["loaded"].items():
        path = Path(os.path.realpath(file)) if file else None
        if path and path.is_file() and name.partition(".")[0] != "beam_pipeline" and \
                path.is_relative_to(SITE_PACKAGES.resolve()):  # else stdlib, or built-in / synthetic (torch.ops)
            parts = path.relative_to(SITE_PACKAGES.resolve()).parts
            loaded[name] = owner.get(parts, f"(no distribution lists {path})")
    direct = {loaded[name] for name in report["direct"] if name in loaded}
    return done, loaded, direct


def test_a_job_runs_with_only_the_runtime_requirements_installed(probe):
    done, loaded, _ = probe
    assert done.returncode == 0, done.stderr[-4000:]
    assert {"cv2", "faiss", "torch", "transformers", "matplotlib"} <= set(loaded)  # the probe reached every stage


def test_every_distribution_a_job_imports_is_in_the_runtime_requirements(probe):
    done, loaded, _ = probe
    assert done.returncode == 0, "the job failed with only the runtime requirements installed (see the test above)"
    missing = set(loaded.values()) - closure(RUNTIME) - {DISTRIBUTION}
    assert not missing, f"imported at run time but not pulled in by requirements.txt: {sorted(missing)}"


def test_every_runtime_requirement_is_imported_directly_by_the_pipeline(probe):
    done, loaded, direct = probe
    assert done.returncode == 0, "the job failed with only the runtime requirements installed (see the test above)"
    names = {canonicalize_name(r.name) for r in RUNTIME}
    unused = names - direct - set(NOT_IMPORTED_AT_RUN_TIME)
    assert not unused, f"listed in requirements.txt but not imported by beam_pipeline at run time: {sorted(unused)}"
    undeclared = direct - names
    assert not undeclared, f"imported directly by beam_pipeline but not listed in requirements.txt: {undeclared}"
    assert not set(NOT_IMPORTED_AT_RUN_TIME) & set(loaded.values())


def test_dev_and_user_side_tools_stay_out_of_the_image():
    runtime = closure(RUNTIME)
    assert DEV_ONLY - {"tensorflow"} <= DEV_TOOLS
    assert not (DEV_ONLY | DEV_TOOLS) & runtime


def test_requirements_are_pinned_as_constraints_pin_them():
    constraints = {canonicalize_name(r.name): r for r in requirement_lines(ROOT / "constraints.txt")}
    for requirement in DEV:
        pins = [str(s) for s in requirement.specifier]
        assert len(pins) == 1 and pins[0].startswith("=="), requirement
        assert requirement.specifier == constraints[canonicalize_name(requirement.name)].specifier, requirement
    assert not closure(RUNTIME) - set(constraints) - {"setuptools"}, "runtime packages constraints.txt leaves open"
    assert "torch==2.13.0" in map(str, RUNTIME)
    assert "tensorflow" not in {canonicalize_name(r.name) for r in DEV} | set(constraints)


def test_the_image_installs_the_runtime_set_and_the_package_declares_it():
    installs = " ".join(line for line in parse(ROOT / "Dockerfile").run_lines() if "pip install" in line)
    assert "-r requirements.txt" in installs and "-c constraints.txt" in installs
    assert "requirements-dev" not in installs
    declared = installed(DISTRIBUTION).requires  # setup.py's install_requires, as installed by `make`
    assert sorted(map(str, map(Requirement, declared))) == sorted(map(str, RUNTIME))
