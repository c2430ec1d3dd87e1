"""Fixtures shared by the test packages: the bundled models, a real server process shared by every test
that can use the default one, and the fake engine for in-process route tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_engine import FakeEngine
from tests.helpers import EMBED, MODEL, embedding_path, model_path
from tests.live_server import Server, serve
from wicore.models.prepared import metadata
from wicore.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real `wicore serve` with the default model and no rate limit, started once per test session
    (a module that needs another configuration defines its own `server`)."""
    model_path(MODEL)
    embedding_path(EMBED)
    with serve(tmp_path_factory.mktemp("server"), {"api": {"rate_limit_per_minute": 0}}) as s:
        yield s


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    """The default model's tokenizer (the fake engine's)."""
    path = model_path(MODEL)
    return Tokenizer.from_metadata(metadata(path), str(path))


@pytest.fixture
def engine(tokenizer: Tokenizer) -> FakeEngine:
    return FakeEngine(tokenizer, MODEL)


@pytest.fixture
def anyio_backend() -> str:
    """In-process route tests (`pytest.mark.anyio`) run on asyncio, as uvicorn serves the app."""
    return "asyncio"
