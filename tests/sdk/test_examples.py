"""Every script in examples/ (the AIgo document's Python samples) runs, against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import REPO
from tests.live_server import KEPT_ENV, Server

EXAMPLES = REPO / "examples"


def run(script: str, cwd: Path, base_url: str | None, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AIGO_", "WICORE_")) or k in KEPT_ENV}
    full_env |= {"AIGO_MAX_TOKENS": "12", **env}
    if base_url:
        full_env["AIGO_BASE_URL"] = base_url
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / script)], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"{script} failed:\n{out.stdout}\n{out.stderr}"
    return out


def requests_served(server: Server) -> int:
    return int(httpx.get(server.url + "/health").json()["total_requests"])


def test_every_example_is_tested() -> None:
    tested = {"01_model_runner.py", "02_chat_adapter.py", "03_text_generation_adapter.py", "04_embedding_adapter.py"}
    tested |= {"05_config_manager.py", "06_memory.py", "07_logger.py", "08_vector_store.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


@pytest.mark.parametrize(
    ("script", "calls"),
    [("01_model_runner.py", 2), ("02_chat_adapter.py", 2), ("03_text_generation_adapter.py", 1)],
)
def test_generation_examples_use_the_server(server: Server, tmp_path: Path, script: str, calls: int) -> None:
    before = requests_served(server)
    out = run(script, tmp_path, server.url + "/v1")
    # load() lists the models once, then one request per generation; /health itself counts too.
    assert requests_served(server) - before >= calls + 1
    assert len(out.stdout.strip()) > 0


def test_embedding_example(server: Server, tmp_path: Path) -> None:
    before = requests_served(server)
    out = run("04_embedding_adapter.py", tmp_path, server.url + "/v1")
    assert requests_served(server) - before >= 4  # models, embed, embed_batch, compute_similarities
    lines = out.stdout.splitlines()
    assert lines[0] == "生成的向量维度: 384"
    sims = [float(line.rsplit(" ", 1)[1]) for line in lines[1:]]
    assert len(sims) == 3 and max(range(3), key=sims.__getitem__) == 1


def test_config_example(tmp_path: Path) -> None:
    path = tmp_path / "aigo.json"
    path.write_text(json.dumps({"models": {"inference": {"name": "qwen2.5-coder-0.5b-instruct"}}}))
    out = run("05_config_manager.py", tmp_path, None, AIGO_CONFIG=str(path))
    assert "app.port = 8000, models.inference.name = qwen2.5-coder-0.5b-instruct" in out.stdout
    saved = json.loads(path.read_text())
    assert saved == {"models": {"inference": {"name": "qwen2.5-coder-0.5b-instruct", "temperature": 0.8}}}


def test_memory_example(tmp_path: Path) -> None:
    out = run("06_memory.py", tmp_path, None)
    assert out.stdout.startswith("User: 你好，请介绍一下你自己。\nAssistant: 我是一个AI助手")
    assert "2 messages" in out.stdout


def test_logger_example(tmp_path: Path) -> None:
    lines = [json.loads(line) for line in run("07_logger.py", tmp_path, None).stderr.splitlines()]
    assert [line["level"] for line in lines] == ["info", "warning", "error", "info"]
    assert lines[2]["event"].endswith("连接失败") and lines[3]["user_id"] == 123 and lines[3]["action"] == "login"


def test_vector_store_example(server: Server, tmp_path: Path) -> None:
    out = run("08_vector_store.py", tmp_path, server.url + "/v1")
    assert out.stdout.count("文档ID: ") == 2 and (tmp_path / "data" / "vectors.db").is_file()
    # Run again on the same file, in-process this time: documents are upserted, not duplicated, and
    # the server's embeddings and the local engine's rank and score them alike.
    again = run("08_vector_store.py", tmp_path, None)

    def ranked(stdout: str) -> list[str]:
        return [line for line in stdout.splitlines() if line.startswith(("文档ID", "文本"))]

    def scores(stdout: str) -> list[float]:
        return [float(line.split(": ")[1]) for line in stdout.splitlines() if line.startswith("相似度")]

    assert ranked(again.stdout) == ranked(out.stdout)
    assert scores(again.stdout) == pytest.approx(scores(out.stdout), abs=2e-4)
