"""The models this server serves, described from their files: one source of truth for every surface.

There are two: the chat model the engine runs and the embedding model its worker loads on first use.
Each surface spells model ids its own way (AIgo's `wicore:` provider prefix, Ollama's `:latest` tag) and
says "not found" in its own words; here names are bare.
"""

from __future__ import annotations

import functools
import json
import struct
from pathlib import Path
from typing import Any, Literal

import tokenizers

from wicore.engine.worker import EMBEDDING_MODEL
from wicore.models import registry
from wicore.models.embedding import max_length_of
from wicore.models.prepared import metadata
from wicore.server.errors import APIError

PROVIDER = "wicore"
ModelKind = Literal["chat", "embedding"]


def safetensors_parameters(path: Path) -> int:
    """Parameters in a safetensors file, from its JSON header (the weights are not read)."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return sum(functools.reduce(lambda a, b: a * b, t["shape"], 1) for k, t in header.items() if k != "__metadata__")


def count_label(n: int) -> str:
    """A parameter count as model cards write it: 494.0M, 22.7M."""
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


class Catalogue:
    """The served chat model and the embedding model."""

    def __init__(self, chat_name: str) -> None:
        self.chat_name = chat_name
        self.embedding_name = EMBEDDING_MODEL

    def kind(self, name: str) -> ModelKind | None:
        """What the model called `name` (bare, no prefix or tag) is; None: not served here."""
        if name == self.chat_name:
            return "chat"
        if name == self.embedding_name:
            return "embedding"
        return None

    # -- the chat model ------------------------------------------------------------------------------

    @functools.cached_property
    def chat_path(self) -> Path:
        return registry.resolve(self.chat_name)

    @functools.cached_property
    def chat_metadata(self) -> dict[str, Any]:
        """The GGUF header's key-value metadata without the per-token vocabulary arrays (kept for the
        server's lifetime; the model itself loads in the engine worker)."""
        return metadata(self.chat_path, vocabulary=False)

    # -- the embedding model -------------------------------------------------------------------------

    def embedding_folder(self) -> Path:
        """Its folder; raises registry.ModelError if it was never pulled."""
        return registry.resolve_embedding(self.embedding_name)

    def embedding_present(self) -> bool:
        try:
            self.embedding_folder()
        except registry.ModelError:
            return False
        return True

    @functools.cached_property
    def _embedding_config(self) -> dict[str, Any]:
        return json.loads((self.embedding_folder() / "config.json").read_text())

    def embedding_config(self) -> dict[str, Any]:
        """Its config.json; a 503 if the model is not pulled (it is looked for again next time)."""
        try:
            return self._embedding_config
        except registry.ModelError as e:
            raise APIError(503, str(e)) from None

    @property
    def embedding_dimensions(self) -> int:
        return int(self.embedding_config()["hidden_size"])

    def embedding_max_length(self) -> int:
        """Tokens an input may have, as the model's loader sets it."""
        return max_length_of(self.embedding_folder(), int(self.embedding_config()["max_position_embeddings"]))

    @functools.cached_property
    def _embedding_tokenizer(self) -> tokenizers.Tokenizer:
        tokenizer = tokenizers.Tokenizer.from_file(str(self.embedding_folder() / "tokenizer.json"))
        tokenizer.no_truncation()  # the file truncates at 128; here we want the true lengths
        tokenizer.no_padding()
        return tokenizer

    def embedding_lengths(self, texts: list[str]) -> list[int]:
        """Tokens each text has for the embedding model ([CLS] and [SEP] included), before any truncation."""
        return [len(e.ids) for e in self._embedding_tokenizer.encode_batch(texts)]

    def embedding_parameters(self) -> int:
        return safetensors_parameters(self.embedding_folder() / "model.safetensors")
