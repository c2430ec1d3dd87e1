"""The loaded models: one engine worker per model, started on first use and unloaded when idle.

A request leases its model's engine (`acquire`) for as long as its response runs and gives it back
(`release`); only an engine nobody leases is ever unloaded, so no request fails because of an unload.
Loading one more model unloads the least recently used when `model.max_loaded` engines are loaded or
their estimated memory (EngineClient.memory) would pass `model.max_memory`; if every loaded engine is
busy, the load waits for one to be released (the victim takes no new leases meanwhile, so it drains),
bounded by the request's deadline.  An engine nobody leases unloads `keep_alive` seconds after its last
release (Ollama's semantics: 0 at once, negative never; each request may set its own).

Engines come from `factory(name)` (run in a thread: it reads the model's metadata), so the caller decides
which names exist and what kind of model each is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from wicore.config import Settings
from wicore.engine.client import EngineClient, EngineUnavailable

log = logging.getLogger("wicore.engine")


@dataclass(eq=False)
class LoadedModel:
    """One model's engine and what the pool tracks about it."""

    name: str
    engine: EngineClient
    users: int = 0  # leases not yet released
    last_used: float = field(default_factory=time.monotonic)
    keep_alive: float = -1.0  # seconds after the last release; negative: forever
    expires_at: float | None = None  # wall-clock time it unloads if still idle; None: not scheduled
    draining: bool = False  # chosen to unload: takes no new leases
    timer: asyncio.TimerHandle | None = None

    def cancel_expiry(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer, self.expires_at = None, None


class EnginePool:
    def __init__(self, settings: Settings, factory: Callable[[str], EngineClient]) -> None:
        self.settings = settings
        self.factory = factory
        self.loaded: dict[str, LoadedModel] = {}
        self._lock = asyncio.Lock()  # one load or unload decision at a time
        self._changed = asyncio.Event()  # set (and replaced) whenever a lease ends or an engine unloads
        self._unloads: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- leases ----------------------------------------------------------------------------------

    async def acquire(self, name: str, deadline: float, keep_alive: float | None = None) -> EngineClient:
        """`name`'s engine once it is ready, loading it first if needed; raises EngineUnavailable when that
        cannot happen before `deadline` (a time.time()). `keep_alive`, when given, becomes the model's
        (else it keeps its own: model.keep_alive when loaded on demand, forever when preloaded). Every
        successful call needs one release()."""
        entry = self.loaded.get(name)
        if entry is None or entry.draining:
            async with self._lock:
                entry = self.loaded.get(name)
                if entry is None:
                    entry = await self._load(name, deadline, self.settings.model.keep_alive)
        entry.users += 1
        entry.cancel_expiry()
        entry.last_used = time.monotonic()
        if keep_alive is not None:
            entry.keep_alive = keep_alive
        try:
            await entry.engine.wait_ready(deadline)
        except BaseException:
            self.release(name)
            raise
        return entry.engine

    def release(self, name: str) -> None:
        """End one lease of `name`; the last one starts its keep-alive."""
        entry = self.loaded.get(name)
        if entry is None:
            return
        entry.users -= 1
        entry.last_used = time.monotonic()
        if entry.users == 0 and not self._closed:
            if entry.keep_alive == 0:
                self._unload_soon(entry)
            elif entry.keep_alive > 0:
                entry.timer = asyncio.get_running_loop().call_later(entry.keep_alive, self._unload_soon, entry)
                entry.expires_at = time.time() + entry.keep_alive
        self._notify()

    # -- loading and unloading -------------------------------------------------------------------

    async def preload(self, names: list[str]) -> None:
        """Start loading `names` without waiting for them to be ready; they stay loaded until evicted or
        a request's keep_alive says otherwise."""
        for name in names:
            async with self._lock:
                if name not in self.loaded:
                    await self._load(name, time.time() + self.settings.scheduler.request_timeout, -1.0)

    async def shutdown(self) -> None:
        self._closed = True
        for entry in self.loaded.values():
            entry.cancel_expiry()
        await asyncio.gather(*(e.engine.shutdown() for e in self.loaded.values()), *self._unloads)
        self.loaded.clear()

    async def _load(self, name: str, deadline: float, keep_alive: float) -> LoadedModel:
        """Start `name`'s worker after making room for it (called holding the lock)."""
        engine = await asyncio.to_thread(self.factory, name)
        await self._make_room(engine.memory, deadline)
        entry = LoadedModel(name, engine, keep_alive=keep_alive)
        self.loaded[name] = entry
        log.info("loading %s (about %.0f MB)", name, engine.memory / 1e6)
        await engine.start()
        return entry

    def _over(self, extra: int) -> bool:
        limits = self.settings.model
        if len(self.loaded) + 1 > limits.max_loaded:
            return True
        return bool(limits.max_memory) and self.memory() + extra > limits.max_memory

    async def _make_room(self, memory: int, deadline: float) -> None:
        """Unload least recently used engines until one of `memory` bytes fits, waiting for busy ones to
        drain (called holding the lock, so no other load races this one). A model larger than the whole
        budget still loads, alone."""
        while self.loaded and self._over(memory):
            victim = min(self.loaded.values(), key=lambda e: (e.users > 0, e.last_used))
            victim.draining = True
            try:
                await self._wait_until(lambda v=victim: v.users == 0, deadline)
            except TimeoutError:
                victim.draining = False
                raise EngineUnavailable(
                    f"every loaded model is busy: {victim.name} did not finish its requests in time to make room"
                ) from None
            log.info("unloading %s to make room (model.max_loaded, model.max_memory)", victim.name)
            await self._shutdown(victim)

    def _unload_soon(self, entry: LoadedModel) -> None:
        """Unload an idle engine whose keep-alive ran out (or was 0), unless a request came back for it."""
        entry.timer = None
        if self._closed or entry.users > 0 or self.loaded.get(entry.name) is not entry:
            return
        task = asyncio.get_running_loop().create_task(self._expire(entry))
        self._unloads.add(task)
        task.add_done_callback(self._unloads.discard)

    async def _expire(self, entry: LoadedModel) -> None:
        async with self._lock:
            if entry.users == 0 and self.loaded.get(entry.name) is entry and not self._closed:
                log.info("unloading %s (idle; keep_alive %g s)", entry.name, entry.keep_alive)
                await self._shutdown(entry)

    async def _shutdown(self, entry: LoadedModel) -> None:
        entry.draining = True
        entry.cancel_expiry()
        del self.loaded[entry.name]
        await entry.engine.shutdown()
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_until(self, predicate: Callable[[], bool], deadline: float) -> None:
        """Return once `predicate` holds (checked after every release and unload); TimeoutError at `deadline`."""
        while not predicate():
            await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - time.time()))

    # -- what is loaded --------------------------------------------------------------------------

    def memory(self) -> int:
        """Estimated bytes of every loaded engine."""
        return sum(e.engine.memory for e in self.loaded.values())
