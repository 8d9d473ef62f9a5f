"""all-MiniLM-L6-v2 as our own torch BERT encoder, loaded from safetensors.

Output is what sentence-transformers gives with `normalize_embeddings=True`: mean pooling over
real tokens, then L2 normalisation. `attn_out` (W_O) and `ffn_down` (W_down) of every layer are
`BEMLinear` sites: with no adapter in a batch they are the plain base projections.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from kernels.layer import BEMContext, BEMLinear, SiteAdapter

SITES = ("attn_out", "ffn_down")


class EncoderLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.attn_out = BEMLinear(nn.Linear(hidden, hidden))
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.ffn_up = nn.Linear(hidden, intermediate)
        self.ffn_down = BEMLinear(nn.Linear(intermediate, hidden))
        self.ffn_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor,
                bem: BEMContext | None = None) -> torch.Tensor:
        b, t, h = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        ctx = ctx.transpose(1, 2).reshape(b, t, h)
        x = self.attn_norm(x + self.attn_out(ctx, bem))
        return self.ffn_norm(x + self.ffn_down(F.gelu(self.ffn_up(x)), bem))


class BertEncoder(nn.Module):
    def __init__(self, config: dict) -> None:
        super().__init__()
        hidden = config["hidden_size"]
        eps = config["layer_norm_eps"]
        self.config = config
        self.word = nn.Embedding(config["vocab_size"], hidden)
        self.position = nn.Embedding(config["max_position_embeddings"], hidden)
        self.token_type = nn.Embedding(config["type_vocab_size"], hidden)
        self.embed_norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(
            EncoderLayer(hidden, config["num_attention_heads"], config["intermediate_size"], eps)
            for _ in range(config["num_hidden_layers"])
        )

    @property
    def dim(self) -> int:
        return int(self.config["hidden_size"])

    @classmethod
    def from_pretrained(cls, root: Path) -> BertEncoder:
        config = json.loads((root / "config.json").read_text())
        if config.get("hidden_act") != "gelu":
            raise ValueError(f"unsupported hidden_act {config.get('hidden_act')!r}")
        model = cls(config)
        model.load_state_dict(_convert(load_file(str(root / "model.safetensors")), config))
        return model.eval()

    def set_adapters(self, adapters: list[dict[str, SiteAdapter]]) -> None:
        """Install an adapter stack: `adapters[i]` maps "layers.{n}.{site}" to its weights and
        becomes slot i of the stack that `BEMContext` slots refer to."""
        for n, layer in enumerate(self.layers):
            for site in SITES:
                getattr(layer, site).set_adapters([a[f"layers.{n}.{site}"] for a in adapters])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                bem: BEMContext | None = None, *, normalize: bool = True) -> torch.Tensor:
        """(batch, tokens) ids and 0/1 mask → (batch, hidden) unit-norm sentence embeddings
        in fp32 (`normalize=False`: the mean-pooled vectors, whose norms the worker checks).

        bem: the forward's adapter context (`BEMContext.plan`: each sequence's slot in the
        installed stack, -1 = base model); None runs the base model alone."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word(input_ids) + self.position(positions) + self.token_type.weight[0]
        x = self.embed_norm(x)
        keep = attention_mask.bool()
        # Additive mask: padded keys get -inf-like scores; shape (batch, 1, 1, tokens).
        mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device)
        mask = mask.masked_fill(~keep, torch.finfo(x.dtype).min)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask, bem)
        # Pooled in fp32 whatever the weights' dtype: a sum over up to 256 bf16 tokens would
        # lose more than the model's own rounding.
        weights = keep.unsqueeze(-1).float()
        pooled = (x.float() * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1) if normalize else pooled


def _convert(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """Hugging Face BERT parameter names → ours (q, k and v fused into one projection)."""
    out = {
        "word.weight": state["embeddings.word_embeddings.weight"],
        "position.weight": state["embeddings.position_embeddings.weight"],
        "token_type.weight": state["embeddings.token_type_embeddings.weight"],
        "embed_norm.weight": state["embeddings.LayerNorm.weight"],
        "embed_norm.bias": state["embeddings.LayerNorm.bias"],
    }
    names = {
        "attn_out.base": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
        "ffn_up": "intermediate.dense", "ffn_down.base": "output.dense",
        "ffn_norm": "output.LayerNorm",
    }
    for i in range(config["num_hidden_layers"]):
        src = f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            out[f"layers.{i}.qkv.{kind}"] = torch.cat(
                [state[f"{src}attention.self.{p}.{kind}"] for p in ("query", "key", "value")]
            )
            for ours, theirs in names.items():
                out[f"layers.{i}.{ours}.{kind}"] = state[f"{src}{theirs}.{kind}"]
    return out

