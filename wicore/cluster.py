"""`wicore cluster`: N `wicore serve` replicas and SGLang's Model Gateway in front of them, on one machine.

For trying scale-out before deploying it (deploy/ holds the Kubernetes manifests): replica i listens on
127.0.0.1, port api.port + 1 + i, the gateway (`sglang-router`, the `cluster` extra) on api.host:api.port,
routing cache-aware so requests sharing a prompt prefix go to the replica that holds its KV blocks.
Each child runs in its own session, so Ctrl-C reaches only this supervisor, which then stops the gateway
and the replicas in order (SIGTERM, then SIGKILL to each child's whole process group for whatever is
left, engine workers included).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import types
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import httpx

from wicore.config import Settings

log = logging.getLogger("wicore.cluster")
READY_TIMEOUT = 600.0  # seconds for a replica to answer /health (a first run compiles kernels)
STOP_GRACE = 20.0  # seconds each child has to exit after SIGTERM before its process group is killed


class ClusterError(RuntimeError):
    """A replica or the gateway could not start."""


@dataclass
class ClusterSpec:
    """What to start: the gateway's address and routing from `settings`; the replicas read the same
    config file (`config`) and environment, so they serve `model` with the same settings."""

    settings: Settings
    config: str | None = None
    model: str | None = None

    @property
    def replicas(self) -> int:
        return self.settings.cluster.replicas

    @property
    def log_dir(self) -> Path:
        return Path(self.settings.cluster.log_dir)

    def replica_port(self, i: int) -> int:
        return self.settings.api.port + 1 + i

    @property
    def metrics_port(self) -> int:
        """The gateway's own Prometheus port: the first one after the replicas'."""
        return self.settings.api.port + self.replicas + 1

    def replica_command(self, i: int) -> list[str]:
        # Replicas listen on loopback: clients go through the gateway.
        cmd = [sys.executable, "-m", "wicore.cli", "serve", "--host", "127.0.0.1", "--port", str(self.replica_port(i))]
        if self.model is not None:
            cmd += ["--model", self.model]
        if self.config is not None:
            cmd += ["--config", self.config]
        return cmd

    def gateway_command(self) -> list[str]:
        api, cluster = self.settings.api, self.settings.cluster
        workers = [f"http://127.0.0.1:{self.replica_port(i)}" for i in range(self.replicas)]
        return [
            sys.executable, "-m", "sglang_router.launch_router", "--host", api.host, "--port", str(api.port),
            "--worker-urls", *workers, "--policy", cluster.policy,
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(self.metrics_port),
            # A dead replica is taken out of rotation after two failed checks 5 s apart, not minutes later.
            "--health-check-interval-secs", "5", "--health-failure-threshold", "2",
            # A request sent to a replica that just died is retried on another one: the circuit to the dead
            # one opens after two failed tries (the gateway's default is 10, several requests' worth),
            # and is tried again after 10 s, so a restarted replica gets its share back soon.
            "--cb-failure-threshold", "2", "--cb-timeout-duration-secs", "10",
            "--log-level", "warn", *cluster.gateway_args,
        ]  # fmt: skip


class Cluster:
    """The running children; `stop()` ends them all, whatever state they are in."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.replicas: list[subprocess.Popen] = []
        self.gateway: subprocess.Popen | None = None

    def _start(self, cmd: list[str], log_name: str) -> subprocess.Popen:
        self.spec.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.spec.log_dir / log_name).open("ab") as out:
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)  # fmt: skip

    def start(self) -> None:
        spec = self.spec
        if find_spec("sglang_router") is None:
            raise ClusterError("the gateway is not installed: pip install 'wicore[cluster]' (sglang-router)")
        for i in range(spec.replicas):
            self.replicas.append(self._start(spec.replica_command(i), f"replica-{i}.log"))
            log.info("replica %d starting on 127.0.0.1:%d (pid %d)", i, spec.replica_port(i), self.replicas[-1].pid)
        for i, proc in enumerate(self.replicas):
            self._wait_healthy(f"http://127.0.0.1:{spec.replica_port(i)}/health", proc, f"replica-{i}.log")
        self.gateway = self._start(spec.gateway_command(), "gateway.log")
        api = spec.settings.api
        probe = "127.0.0.1" if api.host in ("0.0.0.0", "::") else api.host  # a wildcard bind answers on loopback
        self._wait_healthy(f"http://{probe}:{api.port}/health", self.gateway, "gateway.log")

    def _wait_healthy(self, url: str, proc: subprocess.Popen, log_name: str) -> None:
        end = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise ClusterError(f"{log_name.removesuffix('.log')} exited ({proc.returncode}); see "
                                   f"{self.spec.log_dir / log_name}")  # fmt: skip
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise ClusterError(f"{url} not healthy after {READY_TIMEOUT:g} s; see {self.spec.log_dir / log_name}")

    def watch(self) -> int:
        """Block until the gateway exits (then 1) or a stop signal arrives (KeyboardInterrupt); a replica
        that dies is reported once: the gateway sends its requests to the others."""
        assert self.gateway is not None
        reported: set[int] = set()
        while self.gateway.poll() is None:
            for i, proc in enumerate(self.replicas):
                if proc.poll() is not None and i not in reported:
                    reported.add(i)
                    log.error("replica %d exited (%s); the gateway routes around it", i, proc.returncode)
            time.sleep(0.5)
        log.error("the gateway exited (%s); see %s", self.gateway.returncode, self.spec.log_dir / "gateway.log")
        return 1

    def stop(self) -> None:
        """SIGTERM to each child's process group, the gateway's first (no new requests), as a supervisor
        stops a service; after STOP_GRACE, SIGKILL to each group for whatever is left."""
        children = ([self.gateway] if self.gateway is not None else []) + self.replicas
        for proc in children:
            _signal_group(proc, signal.SIGTERM)
        end = time.monotonic() + STOP_GRACE
        for proc in children:
            try:
                proc.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("pid %d did not stop in %g s; killing its process group", proc.pid, STOP_GRACE)
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    """`signum` to the session `proc` leads (its own process group), members it left behind included."""
    with contextlib.suppress(ProcessLookupError):  # nothing left in it
        os.killpg(proc.pid, signum)


def _raise_interrupt(signum: int, frame: types.FrameType | None) -> None:
    raise KeyboardInterrupt


def run(spec: ClusterSpec) -> int:
    """Start the cluster, print where it answers, and supervise it until Ctrl-C or SIGTERM."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per readiness probe
    # SIGTERM (systemd, docker stop, kill) takes the same path as Ctrl-C; SIGINT is set too, as a shell
    # starts background jobs with it ignored.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    cluster = Cluster(spec)
    try:
        cluster.start()
        api = spec.settings.api
        replicas = ", ".join(f"127.0.0.1:{spec.replica_port(i)}" for i in range(spec.replicas))
        print(
            f"WiCore cluster: gateway http://{api.host}:{api.port}/v1 ({spec.settings.cluster.policy}) over "
            f"{spec.replicas} replicas ({replicas}); gateway metrics http://127.0.0.1:{spec.metrics_port}/metrics; "
            f"logs in {spec.log_dir}/; Ctrl-C stops all",
            flush=True,
        )
        return cluster.watch()
    except KeyboardInterrupt:
        return 0
    finally:
        # Further signals must not interrupt the stop itself.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cluster.stop()
