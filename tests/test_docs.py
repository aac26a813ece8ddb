"""The README, the Flex Template metadata and the Dockerfile stay true to the code."""

import dataclasses
import json
import re
from pathlib import Path

from beam_pipeline import mimic, options
from beam_pipeline.flex_template import template_metadata
from beam_pipeline.fileio.outputs import MANIFEST_COLUMNS
from beam_pipeline.transforms.examples import feature_spec
from beam_pipeline.transforms.snapshot import FEATURE_NAMES

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_options_table_names_every_flag_with_its_default():
    table = {m.group(1): m.group(2) for m in re.finditer(r"^\| `--(\w+)` \| ([^|]+) \|", README, re.MULTILINE)}
    fields = {f.name: f for f in dataclasses.fields(options.Config)}
    assert set(table) == set(fields)
    for name, field in fields.items():
        default = field.default
        if name in options.REQUIRED_FLAGS:
            assert table[name].strip() == "required"
        elif default == ():
            assert table[name].strip() == "none"
        elif isinstance(default, tuple):
            assert table[name].strip() == f"`{','.join(map(str, default))}`"
        elif isinstance(default, bool):
            assert table[name].strip() == f"`{str(default).lower()}`"
        elif isinstance(default, float):
            assert float(table[name].strip("` ")) == default
        elif default:
            assert table[name].strip() == f"`{default}`"


def test_readme_documents_outputs_labels_and_features():
    assert ",".join(MANIFEST_COLUMNS) in README
    assert ", ".join(mimic.LABELS) in README.replace("\n", " ")
    for name in feature_spec(images=True, edge_map=True):
        assert f"`{name}`" in README
    for name in FEATURE_NAMES:
        stem = name.split("_", 1)[1] if name.startswith(("triage_", "last_")) else name
        assert stem in README


def test_template_metadata_is_generated_from_the_flags():
    committed = json.loads((ROOT / "templates" / "metadata.json").read_text())
    assert committed == template_metadata()
    assert [p["name"] for p in committed["parameters"]] == [f.name for f in dataclasses.fields(options.Config)]


def test_dockerfile_copies_files_that_exist():
    sources = re.findall(r"^COPY (?!--from)(.+) \S+$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    for line in sources:
        for name in line.split():
            assert (ROOT / name).exists(), name
    entry = re.search(r"FLEX_TEMPLATE_PYTHON_PY_FILE=/template/(\S+)", (ROOT / "Dockerfile").read_text()).group(1)
    assert (ROOT / entry).exists()
