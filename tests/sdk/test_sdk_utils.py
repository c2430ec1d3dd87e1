"""aigo utilities: ConfigManager over WiCore's settings, ConversationMemory, the structured logger."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from aigo.modules.memory import MESSAGE_OVERHEAD_TOKENS, ConversationMemory, estimate_tokens
from aigo.utils.config import ConfigManager
from aigo.utils.logger import setup_logger
from tests.helpers import model_path
from wicore.config import Settings
from wicore.tokenizer import Tokenizer


def test_config_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"api": {"port": 9001}, "models": {"inference": {"name": "qwen"}}}))
    monkeypatch.setenv("AIGO_CONFIG", str(path))
    config = ConfigManager.load_config()
    assert config.path == path and isinstance(config.settings, Settings)
    assert config.get("api.port") == 9001 and config.get("scheduler.max_batch_size") == 16  # a default
    assert config.get("app.port", 8000) == 8000 and config.get("models.inference.name") == "qwen"
    assert config.get("models.inference.temperature") is None and config.get("api.port.deeper", "d") == "d"
    config.set("models.inference.temperature", 0.8)
    config.set("api.auth_enabled", True)
    assert config.save() == path
    again = ConfigManager.load_config(path)
    assert again.get("models.inference") == {"name": "qwen", "temperature": 0.8}
    assert again.get("api.auth_enabled") is True and again.settings.api.auth_enabled is True
    # Only what was in the file or set goes back to disk, not the filled-in defaults.
    assert json.loads(path.read_text()) == {
        "api": {"port": 9001, "auth_enabled": True},
        "models": {"inference": {"name": "qwen", "temperature": 0.8}},
    }
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temp file left behind


def test_config_validates_and_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"api": {"port": 9001}, "logging": {"level": "INFO"}}))
    monkeypatch.setenv("WICORE_API__PORT", "9100")
    config = ConfigManager.load_config(path)
    assert config.get("api.port") == 9100  # environment beats the file, as for the server
    config.set("api.port", 9200)
    assert config.get("api.port") == 9200  # an explicit set() beats the environment
    with pytest.raises(ValueError, match="port"):
        config.set("api.port", 70000)
    assert config.get("api.port") == 9200  # a rejected value changes nothing
    with pytest.raises(ValueError, match="level"):
        config.set("logging.level", "LOUD")
    config.save()
    assert json.loads(path.read_text())["api"]["port"] == 9200


def test_config_search_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIGO_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    empty = ConfigManager.load_config()
    assert empty.get("api.port") == 8000 and empty.path == tmp_path / "home" / ".config" / "aigo" / "config.json"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "config.json").write_text('{"app": {"port": 1234}}')
    assert ConfigManager.load_config().get("app.port") == 1234
    monkeypatch.setenv("AIGO_CONFIG", str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="missing.json"):
        ConfigManager.load_config()


def test_memory_compress_keeps_system_and_newest(tmp_path: Path) -> None:
    memory = ConversationMemory(max_tokens=60)
    memory.add_message("system", "You are a helpful assistant.")
    for i in range(6):
        memory.add_message("user", f"question {i} " + "word " * 10)
        memory.add_message("assistant", f"answer {i} " + "word " * 10)
    assert memory.total_tokens() > 60
    removed = memory.compress()
    messages = memory.get_messages()
    assert removed == 12 - (len(messages) - 1) and removed > 0
    assert messages[0] == {"role": "system", "content": "You are a helpful assistant."}
    assert messages[-1]["content"].startswith("answer 5") and memory.total_tokens() <= 60
    assert memory.get_formatted_context().startswith("System: You are a helpful assistant.\nUser: question")
    memory.save(tmp_path / "memory.json")
    other = ConversationMemory(max_tokens=10)
    other.load(tmp_path / "memory.json")
    assert other.get_messages() == messages and other.max_tokens == 60
    # The newest message stays even when it alone is over budget.
    tiny = ConversationMemory(max_tokens=8)
    tiny.add_message("user", "old")
    tiny.add_message("user", "a long question " * 20)
    assert tiny.compress() == 1 and tiny.get_messages()[0]["content"].startswith("a long question")


def test_memory_counts_with_the_model_tokenizer() -> None:
    tokenizer = Tokenizer.from_gguf(str(model_path("qwen2.5-coder-0.5b-instruct")))
    text = "什么是机器学习？Machine learning is a field of study."
    memory = ConversationMemory(max_tokens=100, tokenizer=tokenizer)
    memory.add_message("user", text)
    assert memory.total_tokens() == len(tokenizer.encode(text)) + MESSAGE_OVERHEAD_TOKENS
    assert estimate_tokens("机器学习") == 4 and estimate_tokens("abcdefgh") == 2


def test_logger_extra_keys_are_structured() -> None:
    stream = io.StringIO()
    logger = setup_logger("aigo.test", log_level="INFO", stream=stream)
    logger.info("用户操作", extra={"user_id": 123, "action": "login", "status": "success"})
    logger.error("这是一条错误日志，出现了问题: %s", "连接失败")
    logger.debug("below the level")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "用户操作" and first["level"] == "info" and first["logger"] == "aigo.test"
    assert (first["user_id"], first["action"], first["status"]) == (123, "login", "success")
    assert second["event"] == "这是一条错误日志，出现了问题: 连接失败" and second["level"] == "error"
    assert "timestamp" in first
