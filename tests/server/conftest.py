"""Fixtures of the in-process route tests: the fake engine (with the default model's real tokenizer)."""

from __future__ import annotations

import pytest

from tests.fake_engine import FakeEngine
from tests.helpers import MODEL, model_path
from wicore.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    """The default model's tokenizer (the fake engine's)."""
    return Tokenizer.from_gguf(model_path(MODEL))


@pytest.fixture
def engine(tokenizer: Tokenizer) -> FakeEngine:
    return FakeEngine(tokenizer, MODEL)


@pytest.fixture
def anyio_backend() -> str:
    """In-process route tests (`pytest.mark.anyio`) run on asyncio, as uvicorn serves the app."""
    return "asyncio"
