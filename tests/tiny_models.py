"""Tiny encoders with random weights, saved locally, for tests about models other than the packaged one."""

from pathlib import Path

from beam_pipeline import models


def tiny_bert(folder: Path, seed: int, dtype=None) -> str:
    """A 1-layer BERT (stored in ``dtype``, default fp32) with the packaged tokenizer: no download."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    (model.to(dtype) if dtype else model).save_pretrained(folder)
    AutoTokenizer.from_pretrained(models.resolve(models.PACKAGED)).save_pretrained(folder)
    return str(folder)
