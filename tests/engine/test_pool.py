"""The engine pool's policy (which engine loads, waits, unloads and when) over fake engines: no worker
processes, so timing is the pool's own (the real workers: tests/server/test_models_e2e.py); and the
memory estimate the budget counts, for a real model."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.fake_engine import FakeEngine
from tests.helpers import MODEL
from wicore.config import Settings
from wicore.engine.client import EngineClient, EngineUnavailable
from wicore.engine.core import WORKER_RUNTIME_BYTES
from wicore.engine.pool import EnginePool
from wicore.models.prepared import prepared_bytes

pytestmark = pytest.mark.anyio
MB = 1 << 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Engines:
    """A factory of fake engines of given sizes, recording which were shut down."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.made: dict[str, FakeEngine] = {}
        self.shut: list[str] = []

    def __call__(self, name: str) -> FakeEngine:
        engine = FakeEngine(None, name)  # type: ignore[arg-type]  # no text: the pool never tokenises
        engine.memory = self.sizes.get(name, MB)
        shutdown = engine.shutdown

        async def recorded() -> None:
            self.shut.append(name)
            await shutdown()

        engine.shutdown = recorded  # type: ignore[method-assign]
        self.made[name] = engine
        return engine


def pool_of(engines: Engines, **model: object) -> EnginePool:
    return EnginePool(Settings(model=model), engines)  # type: ignore[arg-type]


def soon(seconds: float = 5.0) -> float:
    return time.time() + seconds


async def test_least_recently_used_idle_engine_unloads_first() -> None:
    engines = Engines({})
    pool = pool_of(engines, max_loaded=2, keep_alive=-1)
    for name in ("a", "b"):
        await pool.acquire(name, soon())
        pool.release(name)
    await pool.acquire("a", soon())  # a is now the more recent
    pool.release("a")
    await pool.acquire("c", soon())
    assert list(pool.loaded) == ["a", "c"] and engines.shut == ["b"]


async def test_memory_budget_unloads_until_the_new_engine_fits() -> None:
    engines = Engines({"a": 300 * MB, "b": 300 * MB, "big": 500 * MB})
    pool = pool_of(engines, max_loaded=5, max_memory=700 * MB, keep_alive=-1)
    for name in ("a", "b"):
        await pool.acquire(name, soon())
        pool.release(name)
    await pool.acquire("big", soon())  # 300 + 500 would still pass 700: both go, oldest first
    assert list(pool.loaded) == ["big"] and engines.shut == ["a", "b"] and pool.memory() == 500 * MB


async def test_a_busy_engine_is_unloaded_only_after_its_last_request() -> None:
    engines = Engines({})
    pool = pool_of(engines, max_loaded=1, keep_alive=-1)
    await pool.acquire("a", soon())  # held, as by a running request
    loading = asyncio.ensure_future(pool.acquire("b", soon()))
    await asyncio.sleep(0.05)
    assert not loading.done() and engines.shut == [] and pool.loaded["a"].draining
    # A new request for the draining model queues behind the load instead of holding it up.
    again = asyncio.ensure_future(pool.acquire("a", soon()))
    await asyncio.sleep(0.05)
    assert not again.done()
    pool.release("a")
    await loading
    assert engines.shut == ["a"] and list(pool.loaded) == ["b"]
    pool.release("b")
    await again  # b was idle: it made room for a again
    assert engines.shut == ["a", "b"] and list(pool.loaded) == ["a"]


async def test_a_load_that_cannot_make_room_in_time_is_refused() -> None:
    engines = Engines({})
    pool = pool_of(engines, max_loaded=1, keep_alive=-1)
    await pool.acquire("a", soon())
    with pytest.raises(EngineUnavailable, match="busy"):
        await pool.acquire("b", soon(0.2))
    assert list(pool.loaded) == ["a"] and not pool.loaded["a"].draining  # a serves on


async def test_keep_alive() -> None:
    engines = Engines({})
    pool = pool_of(engines, keep_alive=0.1)
    await pool.acquire("a", soon())
    assert pool.loaded["a"].expires_at is None  # in use: no countdown
    pool.release("a")
    assert pool.loaded["a"].expires_at is not None
    await asyncio.sleep(0.3)
    assert "a" not in pool.loaded
    # 0 unloads when the last request ends; negative keeps it.
    await pool.acquire("b", soon(), keep_alive=0)
    await pool.acquire("b", soon())
    pool.release("b")
    await asyncio.sleep(0.05)
    assert "b" in pool.loaded  # one request still holds it
    pool.release("b")
    await asyncio.sleep(0.05)
    assert "b" not in pool.loaded
    await pool.acquire("c", soon(), keep_alive=-1)
    pool.release("c")
    await asyncio.sleep(0.3)
    assert "c" in pool.loaded and pool.loaded["c"].expires_at is None


async def test_preloaded_models_stay_and_a_loading_model_is_waited_for() -> None:
    engines = Engines({})
    pool = pool_of(engines, keep_alive=0.05)
    await pool.preload(["a"])
    engine = engines.made["a"]
    engine.ready = False
    with pytest.raises(EngineUnavailable, match="loading"):
        await pool.acquire("a", soon(0.1))
    engine.ready = True
    assert await pool.acquire("a", soon()) is engine
    pool.release("a")
    await asyncio.sleep(0.2)
    assert "a" in pool.loaded  # preloaded: kept, whatever model.keep_alive says
    await pool.shutdown()
    assert engines.shut == ["a"] and not pool.loaded


def test_memory_estimate_is_prepared_weights_kv_cache_and_runtime() -> None:
    settings = Settings(model={"kv_cache_tokens": 1024})
    engine = EngineClient.generative(settings, MODEL, MODEL)
    config = engine.engine_config
    assert config is not None and config.num_blocks == 4096 // 16  # room for one full context (max_model_len)
    weights = prepared_bytes(config.model_path) or config.model_path.stat().st_size
    # Qwen2.5-0.5B: 24 layers, 2 KV heads of 64, float16 K and V.
    assert engine.memory == weights + 24 * 2 * 2 * 64 * 2 * 4096 + WORKER_RUNTIME_BYTES
