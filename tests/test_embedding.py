"""The retrieval embedding in length-sorted, packed sub-batches: the same retrievals as the one padded pass per batch
it replaced, outputs that depend only on a batch's content, and stored token ids exactly the tokenizer's (speed is
measured by ``make bench``, not here)."""

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from beam_pipeline import bench, bert, kb, models
from beam_pipeline.transforms.records import Record
from beam_pipeline.transforms.text import TextSettings, TokenizeAndRetrieve
from tiny_models import tiny_bert


@pytest.fixture(scope="module")
def sample_records(tmp_path_factory, kb_index):
    """Notes and retrieval queries of a generated sample, as the text stage receives them, in batches of 32."""
    pairs = sorted(set(bench.sample_notes(tmp_path_factory.mktemp("text"), 96, kb_index)))
    t = dt.datetime(2150, 1, 1)
    records = [Record(1, 2, f"d{i:03d}", 3, "AP", t, t, None, "p", None, None, note, query, (), (), (), (), ())
               for i, (note, query) in enumerate(pairs)]
    return [records[i:i + 32] for i in range(0, len(records), 32)]


def _stage(index: str, sub_batch: int) -> TokenizeAndRetrieve:
    stage = TokenizeAndRetrieve(TextSettings(models.PACKAGED, "main", 512, index, models.PACKAGED, 3, sub_batch,
                                             kb.read_manifest(index)["index_sha256"]))
    stage.setup()
    return stage


def _outputs(stage, batches) -> list[Record]:
    return [out for batch in batches for out in stage.process(batch) if isinstance(out, Record)]


def test_same_passages_as_the_padded_embedding_and_exact_token_ids(sample_records, kb_index, tmp_path):
    reference_index = str(tmp_path / "kb-before")
    kb.build(reference_index, sub_batch=0)  # the knowledge base as the previous embedding built it
    before = _outputs(_stage(reference_index, 0), sample_records)
    after = _outputs(_stage(kb_index, models.EMBED_SUB_BATCH), sample_records)
    assert len(after) == len(before) >= 60
    same = [set(b.rag_ids) == set(a.rag_ids) for b, a in zip(before, after)]
    assert sum(same) / len(same) >= 0.95
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models.resolve(models.PACKAGED))  # the reference, not our loader
    for record in after:
        assert record.input_ids.itemsize == record.enhanced_input_ids.itemsize == 2  # packed (vocabulary < 2^16)
        assert list(record.input_ids) == tokenizer(record.note, truncation=True, max_length=512)["input_ids"]
        assert list(record.enhanced_input_ids) == tokenizer(record.enhanced_note, truncation=True,
                                                            max_length=512)["input_ids"]


def test_length_groups_are_a_function_of_the_content():
    texts = ["bb", "a", "ccc", "a", "dd"]
    lengths = [len(t) for t in texts]
    groups = models.length_groups(lengths, texts, 2)
    assert [[texts[i] for i in g] for g in groups] == [["a", "a"], ["bb", "dd"], ["ccc"]]
    assert sorted(i for g in groups for i in g) == list(range(len(texts)))
    assert models.length_groups(lengths, texts, 0) == [list(range(len(texts)))]
    assert models.length_groups([], [], 8) == [] and models.length_groups([], [], 0) == []


def test_embeddings_do_not_depend_on_the_order_within_a_batch(sample_records):
    embedder = models.Embedder(models.PACKAGED)
    queries = [r.query for r in sample_records[0]]
    permuted = queries[1::2] + queries[::2]
    vectors, again = embedder.embed(queries), embedder.embed(permuted)
    position = {q: i for i, q in enumerate(queries)}
    assert again.tobytes() == vectors[[position[q] for q in permuted]].tobytes()
    assert vectors.dtype == np.float32 and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_the_stage_is_deterministic(sample_records, kb_index):
    first = _outputs(_stage(kb_index, models.EMBED_SUB_BATCH), sample_records[:1])
    again = _outputs(_stage(kb_index, models.EMBED_SUB_BATCH), sample_records[:1])
    assert [dataclasses.astuple(r) for r in first] == [dataclasses.astuple(r) for r in again]


def test_a_worker_refuses_an_index_other_than_the_one_checked_at_launch(kb_index):
    settings = TextSettings(models.PACKAGED, "main", 512, kb_index, models.PACKAGED, 3, index_sha256="0" * 64)
    with pytest.raises(kb.KnowledgeBaseError, match="is not the index checked at launch"):
        TokenizeAndRetrieve(settings).setup()


def test_the_packaged_index_is_built_once_into_the_cache_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv(kb.CACHE_ENV, str(tmp_path))
    first = kb.packaged_index()
    assert first.startswith(str(tmp_path)) and kb.read_manifest(first)["count"] == 222
    stamp = (tmp_path / first / "index.faiss").stat().st_mtime_ns
    assert kb.packaged_index() == first and (tmp_path / first / "index.faiss").stat().st_mtime_ns == stamp
    assert kb.index_directory("packaged", models.PACKAGED) == first
    assert kb.index_directory("none", models.PACKAGED) is None and kb.index_directory("", models.PACKAGED) is None
    assert kb.index_directory("gs://b/kb", models.PACKAGED) == "gs://b/kb"
    assert [p.name for p in (tmp_path / "kb").iterdir()] == [Path(first).name]  # no half-built folder left


def test_a_remote_jobs_workers_get_the_launchers_index_where_they_can_read_it(kb_index, tmp_path):
    """A local index is copied under the temp location by its checksums (the Dataflow submission test does it on
    GCS); one already remote is used in place; without a temp location a local one is refused at launch."""
    temp = str(tmp_path / "temp")
    manifest = kb.read_manifest(kb_index)
    staged = kb.for_remote_workers(kb_index, temp)
    assert staged == os.path.join(temp, kb.STAGED, f"{manifest['index_sha256']}-{manifest['passages_sha256']}")
    assert all((Path(staged) / name).read_bytes() == (Path(kb_index) / name).read_bytes() for name in kb.FILES)
    assert kb.load(staged).manifest == manifest
    assert kb.for_remote_workers("gs://bucket/kb", None) == "gs://bucket/kb"
    with pytest.raises(kb.KnowledgeBaseError, match=f"{kb_index} is a local folder.*--temp_location"):
        kb.for_remote_workers(kb_index, None)


def test_the_built_in_bert_forward_gives_transformers_hidden_states(sample_records):
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = models.resolve(models.PACKAGED)
    ours, theirs = bert.load(path), AutoModel.from_pretrained(path).eval()
    queries = [r.query for batch in sample_records for r in batch]
    batch = AutoTokenizer.from_pretrained(path)(queries, padding=True, return_tensors="pt")
    assert batch["attention_mask"].sum(1).min() < batch["attention_mask"].shape[1]  # padding is exercised
    with torch.inference_mode():
        difference = ours(batch) - theirs(**batch).last_hidden_state
    assert difference[batch["attention_mask"].bool()].abs().max().item() < 1e-5


def test_the_packed_forward_pools_transformers_hidden_states(sample_records):
    """Packing (only real tokens through the matrix products) regroups the arithmetic, not the result."""
    import torch
    from transformers import AutoModel

    path = models.resolve(models.PACKAGED)
    ours, theirs = bert.load(path), AutoModel.from_pretrained(path).eval()
    tokenizer = models.load_tokenizer(models.PACKAGED)
    ids, _ = tokenizer.encode([r.query for batch in sample_records for r in batch][:48], models.EMBED_MAX_TOKENS)
    assert len({len(row) for row in ids}) > 5  # rows of many lengths: the packing is exercised
    batch = models.padded(ids, tokenizer, torch)
    with torch.inference_mode():
        packed, hidden = ours.pooled(ids), theirs(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    assert (packed - (hidden * mask).sum(1) / mask.sum(1)).abs().max().item() < 1e-5
    assert not ours.pooled([[], []]).any() and not ours.pooled([[], ids[0]])[0].any()  # no tokens: zero vector


def test_padding_is_transformers_padding():
    import torch
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(models.resolve(models.PACKAGED))
    ids, _ = models.load_tokenizer(models.PACKAGED).encode(["chest pain", "", "fever and cough for three days"], 64)
    expected = reference.pad({"input_ids": ids}, return_tensors="pt")
    batch = models.padded(ids, models.load_tokenizer(models.PACKAGED), torch)
    assert batch.keys() == expected.keys() and all(torch.equal(batch[k], expected[k]) for k in batch)


def test_the_default_embedder_does_not_import_transformers():
    """Each worker process loads the encoder and the tokenizer; transformers costs seconds to import there."""
    code = ("import sys; from beam_pipeline import models; e = models.Embedder(models.PACKAGED); "
            "print(e.dim, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["384", "False"]  # neither the model classes nor the tokenizer (models.load_tokenizer)


def test_other_encoders_load_through_transformers(tmp_path):
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    folder = tmp_path / "distilbert"
    DistilBertModel(DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(models.resolve(models.PACKAGED)).save_pretrained(folder)
    assert bert.load(str(folder)) is None and bert.load("sentence-transformers/all-MiniLM-L6-v2") is None
    vectors = models.Embedder(str(folder)).embed(["chest pain", "fever and cough for three days"])
    assert vectors.shape == (2, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_a_bf16_checkpoint_embeds_in_fp32_on_both_forwards(tmp_path, monkeypatch):
    """numpy has no bf16, and a bf16 forward would be lossy: the weights are cast to fp32 when loaded."""
    import torch
    from safetensors.torch import load_file

    folder = tiny_bert(tmp_path / "bf16", seed=0, dtype=torch.bfloat16)
    assert {t.dtype for t in load_file(Path(folder, "model.safetensors")).values()} == {torch.bfloat16}
    texts = ["chest pain", "fever and cough for three days"]
    ours = models.Embedder(folder).embed(texts)
    assert bert.load(folder).word.dtype == torch.float32
    monkeypatch.setattr(bert, "load", lambda path: None)  # as for an encoder the built-in forward declines
    theirs = models.Embedder(folder).embed(texts)
    assert ours.dtype == theirs.dtype == np.float32 and np.abs(ours - theirs).max() < 1e-5


def test_bert_checkpoints_the_forward_does_not_reproduce_are_declined(tmp_path):
    path = Path(models.resolve(models.PACKAGED))
    for change in ({"hidden_act": "gelu_new"}, {"position_embedding_type": "relative_key"}):
        folder = tmp_path / next(iter(change.values()))
        folder.mkdir()
        (folder / "model.safetensors").symlink_to(path / "model.safetensors")
        (folder / "config.json").write_text(json.dumps({**json.loads((path / "config.json").read_text()), **change}))
        assert bert.load(str(folder)) is None


def test_the_stage_starts_no_thread_pools(kb_index):
    """Local runs and Dataflow run one worker process per core, so the text stage must compute on its own thread:
    torch, FAISS and the Rust tokenizer would each start a thread per core otherwise. A fresh process (a pool, once
    started, stays) counts its threads around a batch."""
    script = f"""
import datetime as dt, os
from beam_pipeline import kb, models
from beam_pipeline.transforms.records import Record
from beam_pipeline.transforms.text import TextSettings, TokenizeAndRetrieve
index = {kb_index!r}
stage = TokenizeAndRetrieve(TextSettings(models.PACKAGED, "main", 512, index, models.PACKAGED, 3,
                                         index_sha256=kb.read_manifest(index)["index_sha256"]))
stage.setup()
t = dt.datetime(2150, 1, 1)
batch = [Record(1, 2, f"d{{i}}", 3, "AP", t, t, None, "p", None, None, f"Chief complaint: cough {{i}}.",
                f"cough fever {{i}}", (), (), (), (), ()) for i in range(64)]
before = len(os.listdir("/proc/self/task"))
assert len([r for r in stage.process(batch) if isinstance(r, Record)]) == 64
print(before, len(os.listdir("/proc/self/task")))
"""
    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    before, after = map(int, out.stdout.split())
    assert after == before
