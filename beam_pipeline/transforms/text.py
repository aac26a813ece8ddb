"""Text stage after the leakage filter: unpadded tokens and retrieved medical context.

Notes are processed in batches whose composition depends only on the data (records hashed into buckets by
dicom_id, sorted, chunked): model outputs depend slightly on what else is in a batch, so Beam's timing-based
batching would make reruns differ in the last bits. Within a batch the embedder sorts the retrieval queries by length
into sub-batches (``models.length_groups``), also a pure function of the batch. The tokenizer, the embedding model
and the FAISS index are loaded once per worker process (``apache_beam.utils.shared``) and inference runs
single-threaded per bundle.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
from apache_beam.utils import shared

from beam_pipeline import accounting, kb as kb_lib, models
from beam_pipeline.fileio.csv_tables import InputError
from beam_pipeline.fileio.sharded import shard_of
from beam_pipeline.transforms.records import Record, token_ids

CONTEXT_HEADER = "Retrieved context:"


def context_lines(passages: list[dict]) -> list[str]:
    """What follows the note in the enhanced note: a blank line, the header, one numbered line per retrieved
    passage: ``[i] title (source): text``."""
    return ["", CONTEXT_HEADER] + [f"[{i}] {p['title']} ({p['source']}): {p['text']}"
                                   for i, p in enumerate(passages, start=1)]


def enhanced_note(note: str, lines: list[str]) -> str:
    """The note and its ``context_lines``, joined by newlines (as ``models.Tokenizer.encode_appended`` joins them)."""
    return "\n".join([note, *lines])


def effective_top_k(top_k: int, index_size: int) -> int:
    """k never exceeds the index, so FAISS never pads results with -1."""
    return max(0, min(top_k, index_size))


def retrieve(knowledge: kb_lib.KnowledgeBase, vectors, top_k: int) -> list[list[tuple[int, float]]]:
    """Top-k (passage position, score) per query vector, best first."""
    k = effective_top_k(top_k, knowledge.index.ntotal)
    if k == 0:
        return [[] for _ in range(len(vectors))]
    scores, positions = knowledge.index.search(vectors, k)
    if (positions < 0).any():
        raise RuntimeError("FAISS returned -1: the index has fewer vectors than it reports")
    return [[(int(p), float(s)) for p, s in zip(row_p, row_s)] for row_p, row_s in zip(positions, scores)]


class DeterministicBatches(beam.PTransform):
    """Records -> lists of at most ``size`` records; the same input always gives the same lists.

    A runner deals a grouping's keys to its workers (the local runner round-robin, whatever each key holds), and a
    bucket holds about four batches: 96 records made three buckets, 63 notes for one worker and 33 for the other.
    The batches are therefore regrouped one per key (the batch's first id) and dealt out one by one, at the cost of
    handing the records to the runner once more."""

    def __init__(self, size: int):
        super().__init__()
        self._size = size

    def expand(self, records):
        size = self._size

        def key(record, total):
            buckets = max(1, total // (size * 4))  # about four batches per bucket, many buckets for parallelism
            return shard_of(record.dicom_id, buckets), record

        def chunks(element):
            _, group = element
            ordered = sorted(group, key=lambda r: r.dicom_id)
            for start in range(0, len(ordered), size):
                yield ordered[start:start + size]

        total = beam.pvalue.AsSingleton(records | "Count" >> beam.combiners.Count.Globally())
        return (records
                | "Bucket" >> beam.Map(key, total=total)
                | "GroupByBucket" >> beam.GroupByKey()
                | "Chunk" >> beam.FlatMap(chunks)
                | "KeyByFirstId" >> beam.Map(lambda batch: (batch[0].dicom_id, batch))
                | "SpreadBatches" >> beam.GroupByKey()
                | "Unkey" >> beam.FlatMap(lambda keyed: keyed[1]))


@dataclasses.dataclass(frozen=True)
class TextSettings:
    tokenizer: str
    tokenizer_revision: str
    max_tokens: int
    index_directory: str  # the retrieval index resolved at launch, "" for none: workers load it, never build one
    embedding_model: str
    top_k: int
    embed_sub_batch: int = models.EMBED_SUB_BATCH  # 0 = one padded forward pass per batch (the benchmark's reference)
    index_sha256: str = ""  # the index resolved at launch: every worker must load exactly this one
    tokenizer_sha256: str = ""  # the tokenizer resolved at launch, likewise ("" = unchecked, the benchmark's)


class _Models:
    """What a worker process loads once (a class, so apache_beam.utils.shared can hold a weak reference)."""

    def __init__(self, settings: TextSettings):
        self.tokenizer = models.load_tokenizer(settings.tokenizer, settings.tokenizer_revision)
        if settings.tokenizer_sha256 and self.tokenizer.sha256 != settings.tokenizer_sha256:
            raise InputError(f"tokenizer {settings.tokenizer!r} (revision {settings.tokenizer_revision}) loads as "
                             f"sha256 {self.tokenizer.sha256} on this worker, not the {settings.tokenizer_sha256} "
                             "checked at launch; pin --tokenizer_revision to a commit or pass a local directory")
        directory = settings.index_directory
        self.embedder = models.Embedder(settings.embedding_model, settings.embed_sub_batch) if directory else None
        self.knowledge = kb_lib.load(directory) if directory else None
        if self.knowledge is not None and self.knowledge.manifest["index_sha256"] != settings.index_sha256:
            raise kb_lib.KnowledgeBaseError(
                f"{directory}: index_sha256 {self.knowledge.manifest['index_sha256']} is not the index checked at "
                f"launch ({settings.index_sha256}); the index changed, or this worker embeds differently")


class TokenizeAndRetrieve(beam.DoFn):
    """A batch of records -> the records with input ids and, with an index, retrieved passages and the enhanced
    note (also tokenised)."""

    def __init__(self, settings: TextSettings):
        self._settings = settings
        self._shared = shared.Shared()
        self._models: _Models | None = None

    def setup(self):
        import faiss

        # One worker process per core: a library's own thread pool would only oversubscribe (torch and the
        # tokenizer: models).
        faiss.omp_set_num_threads(1)
        self._models = self._shared.acquire(lambda: _Models(self._settings))

    def process(self, batch: list[Record]):
        s, m = self._settings, self._models
        notes = [r.note for r in batch]
        ids, truncated = m.tokenizer.encode(notes, s.max_tokens)
        yield accounting.event("notes_tokenized", len(batch))
        if any(truncated):
            yield accounting.event("notes_truncated", sum(truncated))
        extra: list[dict] = [{} for _ in batch]
        if m.knowledge is not None:
            hits = retrieve(m.knowledge, m.embedder.embed([r.query for r in batch]), s.top_k)
            tails = [context_lines([m.knowledge.passages[p] for p, _ in row]) for row in hits]
            enhanced = [enhanced_note(note, tail) for note, tail in zip(notes, tails)]
            enhanced_ids, enhanced_truncated = m.tokenizer.encode_appended(notes, (ids, truncated), tails, s.max_tokens)
            if any(enhanced_truncated):
                yield accounting.event("enhanced_notes_truncated", sum(enhanced_truncated))
            for i, row in enumerate(hits):
                extra[i] = {"enhanced_note": enhanced[i], "enhanced_input_ids": token_ids(enhanced_ids[i]),
                            "rag_ids": tuple(m.knowledge.passages[p]["id"] for p, _ in row),
                            "rag_scores": tuple(score for _, score in row)}
        for record, record_ids, cut, more in zip(batch, ids, truncated, extra):
            yield dataclasses.replace(record, input_ids=token_ids(record_ids), truncated=cut, **more)
