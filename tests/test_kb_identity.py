"""An index is used only with what it was built from: the embedding model's files (not just its name), the passages
file it stores, and, for the demo's and the benchmark's own indexes, the passages and settings they would build
with; a remote job's staged copy is named by both checksums."""

import json
import shutil
import types
from pathlib import Path

import pytest

from beam_pipeline import bench, demo, kb, models, run, sample
from beam_pipeline.fileio.csv_tables import InputError
from beam_pipeline.options import make_config
from beam_pipeline.pipeline import resolve_text
from tiny_models import tiny_bert


def launch(kb_index: str, embedding_model: str = models.PACKAGED) -> dict:
    config = make_config({"mimic_cxr_root": "cxr", "mimic_ed_root": "ed", "output": "out", "tokenizer": models.PACKAGED,
                          "kb_index": kb_index, "embedding_model": embedding_model})
    return resolve_text(config)["retrieval"]


def copy(index: str, folder: Path, **changes) -> str:
    """A copy of ``index`` with kb.json's fields changed (None: removed)."""
    shutil.copytree(index, folder)
    manifest = {k: v for k, v in {**kb.read_manifest(str(folder)), **changes}.items() if v is not None}
    (folder / "kb.json").write_text(json.dumps(manifest))
    return str(folder)


def test_a_model_folder_whose_weights_change_gets_a_new_index_and_fails_the_launch_check(tmp_path, monkeypatch):
    monkeypatch.setenv(kb.CACHE_ENV, str(tmp_path / "cache"))
    model = tiny_bert(tmp_path / "model", seed=0)
    first = kb.packaged_index(model)
    launch(first, model)
    tiny_bert(tmp_path / "model", seed=1)  # retrained, under the same name
    with pytest.raises(InputError, match=f"{first} was built with embedding model '{model}' \\(sha256:.*\\), but "
                                         f"--embedding_model={model} is sha256:"):
        launch(first, model)
    second = kb.packaged_index(model)
    assert second != first and kb.load(second).index.ntotal == kb.load(first).index.ntotal == 222
    recorded = [kb.read_manifest(index)["embedding_model_fingerprint"] for index in (first, second)]
    checked = launch(second, model)["embedding_model_fingerprint"]
    assert recorded[0] != recorded[1] == checked == models.fingerprint(model)


def test_an_index_without_a_model_fingerprint_is_refused_at_launch(kb_index, tmp_path):
    """Built before kb.json recorded one: nothing says which weights it holds."""
    old = copy(kb_index, tmp_path / "old", embedding_model_fingerprint=None)
    with pytest.raises(InputError, match=f"{old} records no fingerprint of its embedding model .* rebuild it with "
                                         f"python -m beam_pipeline.kb build {old}"):
        launch(old)
    assert launch(kb_index)["embedding_model_fingerprint"] == models.fingerprint(models.PACKAGED)


def test_a_hub_model_is_identified_by_its_commit(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda name, **_: f"/hub/{name}/snapshots/0a1b2c")
    assert models.fingerprint("org/encoder") == "hub-commit:0a1b2c"

    def offline(name, **_):
        raise LocalEntryNotFoundError("not in the cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(OSError, match="cannot identify embedding model 'org/encoder': not in the cache"):
        models.fingerprint("org/encoder")


def test_edited_passages_are_refused_by_the_loader_and_at_launch(kb_index, tmp_path):
    """Swapping two lines would give each of them the other's vector."""
    edited = copy(kb_index, tmp_path / "edited")
    lines = Path(edited, "passages.jsonl").read_text().splitlines(keepends=True)
    Path(edited, "passages.jsonl").write_text("".join([lines[1], lines[0], *lines[2:]]))
    message = f"{edited}/passages.jsonl does not match kb.json \\(passages_sha256\\)"
    with pytest.raises(kb.KnowledgeBaseError, match=message):
        kb.load(edited)
    with pytest.raises(InputError, match=message):
        launch(edited)
    assert not kb.up_to_date(edited) and kb.up_to_date(kb_index)


def test_indexes_differing_only_in_passages_are_staged_apart(tmp_path):
    """A passage's source is not embedded, so two jobs' indexes can share index bytes: one must not overwrite the
    other's passages under the temp location."""
    staged = []
    for source in ("Handbook, 1st edition", "Handbook, 2nd edition"):
        own = tmp_path / f"{len(staged)}.jsonl"
        own.write_text(json.dumps({"id": "a", "title": "Asthma", "text": "Wheezing.", "source": source}) + "\n")
        kb.build(str(tmp_path / f"index-{len(staged)}"), str(own))
        staged.append(kb.for_remote_workers(str(tmp_path / f"index-{len(staged)}"), str(tmp_path / "temp")))
    first, second = (kb.load(folder) for folder in staged)
    assert first.manifest["index_sha256"] == second.manifest["index_sha256"] and staged[0] != staged[1]
    assert [k.passages[0]["source"] for k in (first, second)] == ["Handbook, 1st edition", "Handbook, 2nd edition"]
    for folder, k in zip(staged, (first, second)):
        assert folder == str(tmp_path / "temp" / kb.STAGED / f"{k.manifest['index_sha256']}-"
                                                              f"{k.manifest['passages_sha256']}")


@pytest.fixture
def builds(monkeypatch) -> list:
    """kb.build recorded instead of run."""
    calls = []
    monkeypatch.setattr(kb, "build", lambda output, **kwargs: calls.append((output, kwargs)) or {"count": 0})
    return calls


@pytest.mark.parametrize("stale", [{}, {"embedding_model_fingerprint": None}, {"forward": "bert-torch-1"},
                                   {"passages_sha256": "0" * 64}])
def test_the_demo_rebuilds_its_index_unless_it_is_what_it_would_build(kb_index, tmp_path, monkeypatch, builds, stale):
    roots = types.SimpleNamespace(cxr="cxr", ed="ed", iv="iv")
    monkeypatch.setattr(sample, "generate", lambda *args, **kwargs: roots)
    monkeypatch.setattr(run, "main", lambda argv: None)
    copy(kb_index, tmp_path / "kb", **stale)
    demo.main([f"--workdir={tmp_path}"])
    assert builds == ([(str(tmp_path / "kb"), {})] if stale else [])


def test_the_benchmark_rebuilds_its_own_indexes_unless_current_and_uses_a_given_one_as_it_is(kb_index, tmp_path,
                                                                                           monkeypatch, builds):
    class Measured(Exception):
        """Stops text_micro once its indexes are chosen."""

    def sample_notes(workdir, count, index):
        raise Measured(index)

    monkeypatch.setattr(bench, "sample_notes", sample_notes)
    copy(kb_index, tmp_path / "kb")  # built as "after" is (sub-batches of 16)
    copy(kb_index, tmp_path / "kb-before")  # but "before" embeds in one padded pass (sub_batch 0)
    with pytest.raises(Measured, match=str(tmp_path / "kb")):
        bench.text_micro(tmp_path, 8, 0.01)
    assert builds == [(str(tmp_path / "kb-before"), {"sub_batch": 0})]
    builds.clear()
    stale = copy(kb_index, tmp_path / "given", forward="bert-torch-1")
    shutil.rmtree(tmp_path / "kb-before")
    with pytest.raises(Measured, match=stale):
        bench.text_micro(tmp_path, 8, 0.01, stale)
    assert builds == [(str(tmp_path / "kb-before"), {"sub_batch": 0})]
