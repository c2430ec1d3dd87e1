"""Start a real `wicore serve` process on a free loopback port for tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx


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

    def worker_pid(self) -> int:
        """The engine worker: the server's child process that is not multiprocessing's resource tracker."""
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            children = (task / "children").read_text().split()
            for pid in children:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                if "resource_tracker" not in cmdline:
                    return int(pid)
        raise RuntimeError("no engine worker process found")


@contextmanager
def serve(tmp_path: Path, config: dict[str, Any] | None = None, wait: bool = True) -> Iterator[Server]:
    port = free_port()
    cfg = tmp_path / f"config-{port}.json"
    cfg.write_text(json.dumps(config or {}))
    log = tmp_path / f"server-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WICORE_") or k == "WICORE_HOME"}
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
