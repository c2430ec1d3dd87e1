"""The models this server can serve, described from their files: one source of truth for every surface.

Every generative model in the models folder (the bundled ones pulled, any other GGUF file placed there,
named by its stem), the GGUF files named by path in the settings (`model.name`, `model.preload`), and
every bundled embedding model pulled. The folder is looked at again on each question, so a model pulled
or placed while the server runs is servable at once. Each surface spells model ids its own way (AIgo's
`wicore:` provider prefix, Ollama's `:latest` tag); here names are bare.
"""

from __future__ import annotations

import functools
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tokenizers

from wicore.config import Settings
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


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    kind: ModelKind
    path: Path  # the GGUF file of a generative model, the folder of an embedding model


@functools.cache
def _gguf_metadata(path: Path, mtime_ns: int) -> dict[str, Any]:
    return metadata(path, vocabulary=False)


@functools.cache
def _embedding_config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text())


@functools.cache
def _embedding_tokenizer(folder: Path) -> tokenizers.Tokenizer:
    tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_truncation()  # the file truncates at 128; here we want the true lengths
    tokenizer.no_padding()
    return tokenizer


class Catalogue:
    def __init__(self, settings: Settings) -> None:
        model = settings.model
        self.default_chat = registry.model_name(model.name)
        self.default_embedding = model.embedding
        # Models named by a GGUF path are served under their file's stem.
        self._paths = {registry.model_name(s): s for s in (model.name, *model.preload) if registry.is_path(s)}

    def entries(self) -> dict[str, CatalogueEntry]:
        """Every model servable now, by name: the default model, the other generative models by name, then
        the embedding models."""
        chat = {**registry.local_models(), **{n: Path(s).expanduser() for n, s in self._paths.items()}}
        order = sorted(chat, key=lambda n: (n != self.default_chat, n))
        found = {n: CatalogueEntry(n, "chat", chat[n]) for n in order if chat[n].is_file()}
        found.update({n: CatalogueEntry(n, "embedding", p) for n, p in registry.local_embeddings().items()})
        return found

    def source(self, name: str) -> str:
        """What the engine loads for the generative model `name`: a GGUF path."""
        return str(self.entry(name).path)

    def entry(self, name: str, kind: ModelKind | None = None, shown: str | None = None) -> CatalogueEntry:
        """The model called `name` (bare); a 404 listing the available models if there is none, a 400 if
        it is not of `kind`. `shown` is the name as the request spelled it, for the messages."""
        entries = self.entries()
        found = entries.get(name)
        shown = shown or name
        if found is None:
            available = ", ".join(entries) or "none (run `wicore models pull`)"
            raise APIError(404, f"model '{shown}' not found; available models: {available}", param="model")
        if kind == "chat" and found.kind != "chat":
            raise APIError(400, f"model: `{shown}` is an embedding model; it cannot generate text", param="model")
        if kind == "embedding" and found.kind != "embedding":
            embedders = ", ".join(n for n, e in entries.items() if e.kind == "embedding")
            raise APIError(400, f"model: `{shown}` cannot embed; use {embedders}", param="model")
        return found

    def default(self, kind: ModelKind) -> str:
        return self.default_chat if kind == "chat" else self.default_embedding

    # -- generative models -----------------------------------------------------------------------

    def chat_metadata(self, name: str) -> dict[str, Any]:
        """The GGUF header's key-value metadata without the per-token vocabulary arrays (kept for the
        server's lifetime; the model itself loads in its engine worker)."""
        path = self.entry(name, "chat").path
        return _gguf_metadata(path, path.stat().st_mtime_ns)

    # -- embedding models ------------------------------------------------------------------------

    def embedding_folder(self, name: str) -> Path:
        return self.entry(name, "embedding").path

    def embedding_config(self, name: str) -> dict[str, Any]:
        """Its config.json."""
        return _embedding_config(self.embedding_folder(name))

    def embedding_dimensions(self, name: str) -> int:
        return int(self.embedding_config(name)["hidden_size"])

    def embedding_max_length(self, name: str) -> int:
        """Tokens an input may have, as the model's loader sets it."""
        folder = self.embedding_folder(name)
        return max_length_of(folder, int(_embedding_config(folder)["max_position_embeddings"]))

    def embedding_lengths(self, name: str, texts: list[str]) -> list[int]:
        """Tokens each text has for the embedding model ([CLS] and [SEP] included), before any truncation."""
        return [len(e.ids) for e in _embedding_tokenizer(self.embedding_folder(name)).encode_batch(texts)]

    def embedding_parameters(self, name: str) -> int:
        return safetensors_parameters(self.embedding_folder(name) / "model.safetensors")
