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

FORWARD = "bert-torch-1"  # names this implementation in the packaged index's cache key (kb.packaged_index)


class BertEncoder:
    """Embeddings + post-norm transformer layers with exact GELU, eval mode (no dropout), fp32."""

    def __init__(self, config: dict, weights: dict):
        import torch

        self.dim = config["hidden_size"]
        self.heads = config["num_attention_heads"]
        self.eps = config["layer_norm_eps"]
        w = {name.removeprefix("bert."): tensor for name, tensor in weights.items()}
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
        """``batch``: input_ids, attention_mask and optionally token_type_ids, [n, length] -> [n, length, dim]."""
        import torch.nn.functional as F

        ids, mask = batch["input_ids"], batch["attention_mask"]
        n, length = ids.shape
        types = batch.get("token_type_ids")
        x = self.word[ids] + self.position[:length] + (self.token_type[types] if types is not None
                                                        else self.token_type[0])
        x = F.layer_norm(x, (self.dim,), *self.norm, self.eps)
        keep = mask.bool()[:, None, None, :]  # attend to real tokens only
        for layer in self.layers:
            q, k, v = F.linear(x, *layer["qkv"]).view(n, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=keep).transpose(1, 2).reshape(n, length, -1)
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
