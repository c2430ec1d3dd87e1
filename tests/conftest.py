"""Fixtures shared by the test packages: a real server process, started once, for every server and SDK
test that can use the default configuration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import EMBED, MODEL, embedding_path, model_path
from tests.live_server import Server, serve


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real `wicore serve` with the default model and no rate limit, started once per test session
    (a module that needs another configuration defines its own `server`)."""
    model_path(MODEL)
    embedding_path(EMBED)
    with serve(tmp_path_factory.mktemp("server"), {"api": {"rate_limit_per_minute": 0}}) as s:
        yield s
