"""`wicore cluster --replicas 2`: two real replicas behind SGLang's Model Gateway (the real `sglang-router`
binary) on loopback, driven through the gateway with the `openai` client.

The tests run in file order over one cluster: gauges, cache-aware routing, a replica killed, then the stop.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import MODEL, model_path
from tests.live_server import KEPT_ENV

pytest.importorskip("sglang_router", reason="the sglang-router wheel (wicore[cluster]) is not installed here")

REPLICAS = 2
# A system prompt of ~600 tokens shared by every request of the routing test: long enough that the
# gateway's prefix match (and the replica's prefix cache) decides where it goes.
PREFIX = "You are a careful assistant. " + " ".join(
    f"Rule {i}: answer briefly and precisely about topic {i}." for i in range(40)
)
QUESTIONS = ["What is 2+2?", "Name a colour.", "Say hi.", "Count to three."]


def free_port_run(n: int) -> int:
    """The first of `n` consecutive free loopback ports."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - n)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (Linux: /proc/<pid>/task/*/children)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                kids = {int(c) for c in (task / "children").read_text().split()}
            except OSError:  # the task ended meanwhile
                continue
            todo += kids - found
            found |= kids
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


@dataclass
class ClusterProc:
    proc: subprocess.Popen
    port: int
    log_dir: Path
    output: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def replica_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.port + 1 + i}"

    def served(self) -> list[int]:
        """Requests each replica has taken, from its own /status."""
        return [httpx.get(self.replica_url(i) + "/status").json()["scheduler"]["total_requests"] for i in range(2)]

    def replica_pid(self, i: int) -> int:
        needle = f"--port\0{self.port + 1 + i}\0".encode()
        for pid in descendants(self.proc.pid):
            try:
                if needle in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
            except OSError:
                continue
        raise RuntimeError(f"replica {i} not found")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProc]:
    model_path(MODEL)
    tmp = tmp_path_factory.mktemp("cluster")
    port = free_port_run(REPLICAS + 2)  # the gateway, the replicas, the gateway's metrics
    config = tmp / "config.json"
    config.write_text(json.dumps({
        "api": {"rate_limit_per_minute": 0},
        "model": {"kv_cache_tokens": 4096},  # two replicas on a small machine
        "cluster": {"log_dir": str(tmp / "logs")},
    }))  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("WICORE_") or k in KEPT_ENV}
    output = tmp / "cluster.out"
    with output.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wicore.cli", "cluster", "--replicas", str(REPLICAS), "--port", str(port),
             "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    handle = ClusterProc(proc, port, tmp / "logs", output)
    end = time.time() + 300
    while "WiCore cluster:" not in output.read_text():
        if proc.poll() is not None or time.time() > end:
            proc.kill()
            pytest.fail(f"the cluster did not start:\n{output.read_text()[-4000:]}")
        time.sleep(0.2)
    try:
        yield handle
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)


def client(c: ClusterProc) -> openai.OpenAI:
    # No client retries: a failure the gateway lets through must show.
    return openai.OpenAI(base_url=c.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def ask(c: ClusterProc, question: str, max_tokens: int = 4) -> openai.types.chat.ChatCompletion:
    return client(c).chat.completions.create(
        model=MODEL, max_tokens=max_tokens, temperature=0,
        messages=[{"role": "system", "content": PREFIX}, {"role": "user", "content": question}],
    )  # fmt: skip


def test_replicas_export_the_gauges_gateways_read_under_vllm_names(cluster: ClusterProc) -> None:
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(cluster.replica_url(0) + "/metrics").text)}
    for name in ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"):
        (sample,) = families[name].samples
        assert families[name].type == "gauge"
        assert sample.labels == {"model_name": MODEL}
        assert sample.value == 0.0  # idle
    # Beside WiCore's own names, same figures.
    assert "wicore:num_requests_waiting" in families


def test_requests_sharing_a_long_prefix_land_on_one_replica_and_hit_its_cache(cluster: ClusterProc) -> None:
    before = cluster.served()
    answers = [ask(cluster, q) for q in QUESTIONS]
    after = cluster.served()
    taken = [a - b for a, b in zip(after, before, strict=True)]
    assert sorted(taken) == [0, len(QUESTIONS)], taken  # all on one replica
    first, *repeats = answers
    assert first.usage.prompt_tokens > 500
    for r in repeats:
        assert r.choices[0].message.content
        # Most of the prompt (the system prefix) came from that replica's prefix cache.
        assert r.usage.prompt_tokens_details.cached_tokens > r.usage.prompt_tokens // 2, r.usage


def test_a_replica_killed_mid_run_sends_new_requests_to_the_other(cluster: ClusterProc) -> None:
    served = cluster.served()
    hot = served.index(max(served))  # the replica holding the prefix: where these requests go first
    other = 1 - hot
    in_flight: list[BaseException | str] = []

    def long_answer() -> None:
        try:
            in_flight.append(ask(cluster, "Write a long story.", max_tokens=200).choices[0].message.content or "")
        except Exception as e:  # the request on the killed replica: it may fail, that is the first failure
            in_flight.append(e)

    runner = threading.Thread(target=long_answer)
    runner.start()
    end = time.time() + 60
    # SGLang's load probe (what the gateway's power_of_two policy polls) shows it running there.
    while (load := httpx.get(cluster.replica_url(hot) + "/get_load").json())[0]["num_tokens"] < 500:
        assert time.time() < end and runner.is_alive(), "the long request never ran on the hot replica"
        time.sleep(0.05)
    assert load == [{"dp_rank": 0, "num_reqs": 1, "num_waiting_reqs": 0, "num_tokens": load[0]["num_tokens"]}]
    os.killpg(cluster.replica_pid(hot), signal.SIGKILL)  # a crash: the HTTP process and its worker
    runner.join(120)

    before = httpx.get(cluster.replica_url(other) + "/status").json()["scheduler"]["total_requests"]
    outcomes: list[str] = []
    for q in QUESTIONS * 2:
        try:
            outcomes.append(ask(cluster, q).choices[0].message.content or "")
        except openai.APIError as e:
            outcomes.append(f"failed: {e}")
    failures = [o for o in outcomes if o.startswith("failed")]
    # Nothing fails after the first new request (the gateway may try the dead replica once).
    assert not [o for o in outcomes[1:] if o.startswith("failed")], outcomes
    after = httpx.get(cluster.replica_url(other) + "/status").json()["scheduler"]["total_requests"]
    assert after - before == len(outcomes) - len(failures)


def test_stopping_the_cluster_leaves_no_process_and_starts_no_worker(cluster: ClusterProc) -> None:
    tree = descendants(cluster.proc.pid)
    assert len(tree) >= 4  # the gateway, a replica and its engine worker and resource tracker
    started = time.monotonic()
    cluster.proc.send_signal(signal.SIGTERM)
    assert cluster.proc.wait(60) == 0
    assert time.monotonic() - started < 15  # stopped gracefully, not by the SIGKILL fallback (20 s)
    time.sleep(0.5)
    assert not [pid for pid in tree if alive(pid)]
    # The surviving replica got SIGTERM in its whole process group (the engine worker too): its HTTP
    # process must stop the worker, not restart it as if it had died.
    logs = {p.name: p.read_text() for p in cluster.log_dir.glob("replica-*.log")}
    assert len(logs) == REPLICAS
    survivor = max(logs.values(), key=lambda text: "Finished server process" in text)
    assert "Finished server process" in survivor
    assert len(re.findall(r"engine worker of \S+ started", survivor)) == 1, survivor[-3000:]
    assert "died (exit code" not in survivor
