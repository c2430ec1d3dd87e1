"""A real `wicore serve` process on a free loopback port for tests, and clients that watch it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import MODEL

KEPT_ENV = ("WICORE_HOME", "WICORE_BUILD_DIR")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def wait_ready(self, timeout: float = 180) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log.read_text()[-4000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server not healthy after {timeout} s:\n{self.log.read_text()[-4000:]}")

    def worker_pid(self, model: str = MODEL) -> int:
        """The process id of `model`'s engine worker, as /status shows it (the model must be loaded)."""
        for loaded in httpx.get(self.url + "/status", timeout=10).json()["models"]:
            if loaded["name"] == model and loaded["pid"] is not None:
                return int(loaded["pid"])
        raise RuntimeError(f"no engine worker of {model} is loaded")


@contextmanager
def serve(tmp_path: Path, config: dict[str, Any] | None = None, wait: bool = True) -> Iterator[Server]:
    port = free_port()
    cfg = tmp_path / f"config-{port}.json"
    cfg.write_text(json.dumps(config or {}))
    log = tmp_path / f"server-{port}.log"
    # Settings come from `config` only; where models and built kernels live is kept.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WICORE_") or k in KEPT_ENV}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wicore.cli", "serve", "--port", str(port), "--config", str(cfg)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    server = Server(proc, port, log)
    try:
        if wait:
            server.wait_ready()
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_status(server: Server, done: Callable[[dict], bool], timeout: float = 10) -> dict:
    """The structured scheduler status once `done` holds (it is refreshed every ~0.1 s), or the last seen."""
    end = time.time() + timeout
    while True:
        sched = httpx.get(server.url + "/status").json()["scheduler"]
        if done(sched) or time.time() > end:
            return sched
        time.sleep(0.1)


class Streamer(threading.Thread):
    """One streaming chat completion in the background, recording when content arrives."""

    def __init__(self, url: str, body: dict, headers: dict | None = None, stop_after: int | None = None) -> None:
        super().__init__(daemon=True)
        self.url, self.body, self.headers, self.stop_after = url, body, headers or {}, stop_after
        self.first_content: float | None = None
        self.done_at: float | None = None
        self.events: list[str] = []
        self.status: int | None = None
        self.started = threading.Event()

    def run(self) -> None:
        with httpx.stream(
            "POST", self.url + "/v1/chat/completions", json=self.body, headers=self.headers, timeout=120
        ) as r:
            self.status = r.status_code
            self.started.set()
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                self.events.append(line[6:])
                if self.first_content is None and '"content":"' in line and '"content":""' not in line:
                    self.first_content = time.time()
                if self.stop_after is not None and len(self.events) >= self.stop_after:
                    return  # leaving the block closes the connection: a client disconnect
        self.done_at = time.time()


class FirstText(threading.Thread):
    """A streaming request in the background, noting when its first non-empty text arrives; setting
    `hang_up` makes it close the connection (a client disconnect, which cancels the request)."""

    def __init__(self, url: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.body = url, body
        self.first: float | None = None
        self.hang_up = threading.Event()

    def run(self) -> None:
        with httpx.stream("POST", self.url, json=self.body, timeout=120) as r:
            for line in r.iter_lines():
                if self.first is None and ('"text":"' in line or '"response":"' in line) and '":""' not in line:
                    self.first = time.time()
                if self.hang_up.is_set():
                    return
