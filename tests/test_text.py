import json
import pickle
from pathlib import Path

import apache_beam as beam
import objsize
import pytest

from beam_pipeline import kb, models
from beam_pipeline.transforms.records import Record, token_ids
from beam_pipeline.transforms.text import DeterministicBatches, enhanced_note, retrieve
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
    assert enhanced_note("Note.", passages) == "Note.\n\nRetrieved context:\n[1] T1 (S1): One.\n[2] T2 (S2): Two."


def test_tokenize_unpadded_with_truncation_flags():
    tokenizer = models.load_tokenizer(models.PACKAGED)
    ids, truncated = models.tokenize(tokenizer, ["short note", "word " * 100, ""], max_tokens=16)
    assert [len(i) for i in ids] == [4, 16, 2] and truncated == [False, True, False]
    assert ids[1][0] == tokenizer.cls_token_id and ids[1][-1] == tokenizer.sep_token_id


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


def test_knowledge_base_build_and_load_checks(tmp_path, kb_index):
    manifest = json.loads(Path(kb_index, "kb.json").read_text())
    assert manifest["count"] >= 150 and manifest["dim"] == 384 and manifest["embedding_model"] == models.PACKAGED
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
