"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from wicore.models import registry


def model_path(name: str) -> Path:
    """Path of a bundled model; fails (not skips) with the command that fixes it."""
    try:
        return registry.resolve(name)
    except registry.ModelError as e:
        pytest.fail(f"{e} (make test pulls it)")


def embedding_path(name: str) -> Path:
    """Folder of a bundled embedding model; fails (not skips) with the command that fixes it."""
    try:
        return registry.resolve_embedding(name)
    except registry.ModelError as e:
        pytest.fail(f"{e} (make test pulls it)")
