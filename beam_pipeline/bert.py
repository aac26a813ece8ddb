"""A BERT encoder's forward pass in plain torch, with its weights read from ``model.safetensors``.

Why not transformers' ``BertModel``: importing transformers' model classes costs about 4 s of CPU per process
(transformers 5's loading machinery imports ``torch.distributed`` and more), and every worker process loads the
encoder: one SDK process per vCPU on Dataflow, one per core locally. This forward gives the same last hidden state
as ``BertModel`` in eval mode (to about 2e-6; ``tests/test_embedding.py`` compares them) for the checkpoints it
accepts; ``models.Embedder`` falls back to transformers for anything else.
"""

from __future__ import annotations

import json
import os

FORWARD = "bert-torch-2"  # names this implementation in the packaged index's cache key (kb.packaged_index)


class BertEncoder:
    """Embeddings + post-norm transformer layers with exact GELU, eval mode (no dropout), fp32."""

    def __init__(self, config: dict, weights: dict):
        import torch

        self.dim = config["hidden_size"]
        self.heads = config["num_attention_heads"]
        self.eps = config["layer_norm_eps"]
        # fp32 whatever the checkpoint stores: a bf16 forward would be lossy and its output has no numpy type
        w = {name.removeprefix("bert."): tensor.float() for name, tensor in weights.items()}
        self.word = w["embeddings.word_embeddings.weight"]
        self.position = w["embeddings.position_embeddings.weight"]
        self.token_type = w["embeddings.token_type_embeddings.weight"]
        self.norm = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.layers = []
        for i in range(config["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            attention = [p + f"attention.self.{part}" for part in ("query", "key", "value")]
            qkv = tuple(torch.cat([w[f"{a}.{kind}"] for a in attention]) for kind in ("weight", "bias"))
            self.layers.append({
                "qkv": qkv,
                "out": (w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"]),
                "norm1": (w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"]),
                "up": (w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"]),
                "down": (w[p + "output.dense.weight"], w[p + "output.dense.bias"]),
                "norm2": (w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])})

    def __call__(self, batch: dict):
        """``batch``: input_ids, attention_mask and optionally token_type_ids, [n, length] -> [n, length, dim]
        (padded: every position, pads included, goes through every layer)."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        n, length = ids.shape
        types = batch.get("token_type_ids")
        x = self.word[ids] + self.position[:length] + (self.token_type[types] if types is not None
                                                        else self.token_type[0])
        return self._layers(x.reshape(n * length, self.dim), None, mask.bool()).view(n, length, self.dim)

    def pooled(self, rows: list[list[int]]):
        """Unpadded id lists -> mean of each one's last hidden states, [n, dim]. Packed: only real tokens go through
        the position-wise layers (the matrix products, most of the work, no longer compute pads); the attention
        alone sees them laid out padded, pads masked, as in ``__call__``."""
        import torch

        lengths = torch.tensor([len(row) for row in rows])
        n, longest = len(rows), int(lengths.max())
        if longest == 0:  # no tokens at all (a tokenizer without special tokens, empty texts): zero vectors
            return torch.zeros(n, self.dim)
        positions = torch.cat([torch.arange(length) for length in lengths.tolist()])
        sequence = torch.repeat_interleave(torch.arange(n), lengths)
        ids = torch.tensor([i for row in rows for i in row], dtype=torch.long)
        x = self.word[ids] + self.position[positions] + self.token_type[0]
        keep = torch.arange(longest)[None, :] < lengths[:, None]
        x = self._layers(x, sequence * longest + positions, keep)
        return x.new_zeros(n, self.dim).index_add_(0, sequence, x) / lengths.clamp(min=1)[:, None].to(x.dtype)

    def _layers(self, x, slots, keep):
        """The embedding LayerNorm and the transformer layers over tokens ``x`` [tokens, dim]; ``keep`` [n, longest]
        marks real tokens, ``slots`` says where each row of ``x`` sits in the flattened [n, longest] layout (None:
        ``x`` is that layout, pads included)."""
        import torch.nn.functional as F

        n, longest = keep.shape
        mask = keep[:, None, None, :]  # attend to real tokens only
        x = F.layer_norm(x, (self.dim,), *self.norm, self.eps)
        for layer in self.layers:
            qkv = F.linear(x, *layer["qkv"])
            if slots is not None:
                qkv = qkv.new_zeros(n * longest, qkv.shape[1]).index_copy_(0, slots, qkv)
            q, k, v = qkv.view(n, longest, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(n * longest, -1)
            if slots is not None:
                context = context[slots]
            x = F.layer_norm(x + F.linear(context, *layer["out"]), (self.dim,), *layer["norm1"], self.eps)
            hidden = F.linear(F.gelu(F.linear(x, *layer["up"])), *layer["down"])
            x = F.layer_norm(x + hidden, (self.dim,), *layer["norm2"], self.eps)
        return x


def load(path: str) -> BertEncoder | None:
    """The encoder in local folder ``path``, or None when it is not one this forward reproduces exactly (not a
    local folder, no model.safetensors, another architecture, relative positions or another activation)."""
    config_path, weights_path = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
    if not (os.path.isfile(config_path) and os.path.isfile(weights_path)):
        return None
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    if (config.get("model_type") != "bert" or config.get("hidden_act") != "gelu"
            or config.get("position_embedding_type", "absolute") != "absolute"):
        return None
    from safetensors.torch import load_file

    return BertEncoder(config, load_file(weights_path))
