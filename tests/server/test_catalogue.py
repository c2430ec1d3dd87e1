"""The catalogue: which models a server can serve, found in a models folder and the settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import EMBED, GEMMA, MODEL, embedding_path, model_path
from wicore.config import Settings
from wicore.models import registry
from wicore.server.catalogue import Catalogue
from wicore.server.errors import APIError


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A WICORE_HOME whose models folder holds the default model, a GGUF placed under another name and
    the embedding model (links to the real files), plus a file being pulled; and a GGUF elsewhere."""
    models, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    models.mkdir()
    elsewhere.mkdir()
    (elsewhere / "named.gguf").symlink_to(model_path(GEMMA))
    (models / f"{MODEL}.gguf").symlink_to(model_path(MODEL))
    (models / "my-gemma.gguf").symlink_to(model_path(GEMMA))
    (models / EMBED).symlink_to(embedding_path(EMBED), target_is_directory=True)
    (models / f"{GEMMA}.gguf").write_bytes(b"GGUF")  # a bundled name, not the bundled size: incomplete
    monkeypatch.setenv("WICORE_HOME", str(tmp_path))
    return tmp_path


def test_placed_and_named_models_are_listed_and_resolve(home: Path) -> None:
    elsewhere = home / "elsewhere"
    settings = Settings(model={"preload": [str(elsewhere / "named.gguf")]})
    catalogue = Catalogue(settings)
    entries = catalogue.entries()
    # The default first, then the others by name; the incomplete bundled file is left out.
    assert list(entries) == [MODEL, "my-gemma", "named", EMBED]
    assert [e.kind for e in entries.values()] == ["chat", "chat", "chat", "embedding"]
    assert catalogue.source("named") == str(elsewhere / "named.gguf")
    assert registry.resolve("my-gemma") == home / "models" / "my-gemma.gguf"
    listed = {row["name"]: row["present"] for row in registry.list_models()}  # `wicore models list`
    assert listed == {MODEL: True, GEMMA: False, "my-gemma": True, EMBED: True}
    assert catalogue.embedding_dimensions(EMBED) == 384


def test_unknown_names_and_wrong_kinds(home: Path) -> None:
    catalogue = Catalogue(Settings())
    with pytest.raises(APIError) as info:
        catalogue.entry("llama3", shown="llama3:latest")
    assert info.value.status == 404 and info.value.param == "model"
    assert info.value.message == f"model 'llama3:latest' not found; available models: {MODEL}, my-gemma, {EMBED}"
    with pytest.raises(APIError) as info:
        catalogue.entry(EMBED, "chat")
    assert info.value.status == 400 and "cannot generate text" in info.value.message
    with pytest.raises(APIError) as info:
        catalogue.entry("my-gemma", "embedding")
    assert info.value.status == 400 and f"use {EMBED}" in info.value.message
