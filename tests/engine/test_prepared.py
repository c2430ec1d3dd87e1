"""The prepared-model cache: stale entries of a model are deleted, nothing else is."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import model_path
from wicore.models import prepared


def test_remove_stale_caches_keeps_current_and_other_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WICORE_HOME", str(tmp_path / "home"))
    model = tmp_path / "qwen2.5-coder-0.5b-instruct.gguf"
    model.write_bytes(b"GGUF")
    st = model.stat()
    root = tmp_path / "home" / "prepared"
    root.mkdir(parents=True)
    current = f"{model.stem}-{st.st_size:x}-{st.st_mtime_ns:x}-v{prepared.FORMAT_VERSION}"
    dead_pid = 2**22 + 1  # above pid_max's default: no such process
    stale = [
        f"{model.stem}-1d4a-18edbe-v1",
        f"{model.stem}-1d4a-18edbe-v1.metadata.json",
        f"{current}.metadata.json",  # the one-file metadata of earlier versions
        f"{current}.model.json",
        f"{current}.tmp{dead_pid}",
        f"{model.stem}-1d4a-18edbe-v1.tokenizer-v1",  # derived files of an older model file
        f"{current}.tokenizer-v1.1234.tmp{dead_pid}",  # a derived file's abandoned temporary
    ]
    kept = [
        current,
        f"{current}.header.json",
        f"{current}.tokenizer-v1",
        f"{current}.token-types-v1",
        f"{current}.vocab.json",
        f"{current}.tmp{os.getpid()}",  # a preparation in progress
        f"{model.stem}-q5_0-1d4a-18edbe-v1",  # another model whose name starts with this one's
        "gemma-3-270m-f16-18ed-v2",
    ]
    for name in stale + kept:
        if name.endswith(".json"):
            (root / name).write_text("{}")
        else:
            (root / name).mkdir()
            (root / name / "index.json").write_text("{}")
    prepared.remove_stale_caches(model)
    assert sorted(p.name for p in root.iterdir()) == sorted(kept)


def test_derived_files_are_built_once_and_safe_to_build_concurrently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threads of one process racing to build the same files all get them whole, and the first call's
    contents stay; a later call finds them without building."""
    monkeypatch.setenv("WICORE_HOME", str(tmp_path / "home"))
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    start = threading.Barrier(8)

    def build() -> list[bytes]:
        start.wait()  # every thread is past the existence check before any writes
        return [b"a" * 1_000_000, b"b"]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: prepared.derived_files(model, (".x-v1", ".y-v1"), build), range(8)))
    assert all(r == results[0] for r in results)
    assert [f.read_bytes() for f in results[0]] == [b"a" * 1_000_000, b"b"]
    assert sorted(p.name for p in (tmp_path / "home" / "prepared").iterdir()) == sorted(f.name for f in results[0])
    assert prepared.derived_files(model, (".x-v1", ".y-v1"), lambda: pytest.fail("built again")) == results[0]


def test_metadata_without_vocabulary_has_the_model_shape_only() -> None:
    path = model_path("gemma-3-270m")
    full = prepared.metadata(path)
    shape_only = prepared.metadata(path, vocabulary=False)
    assert len(full["tokenizer.ggml.tokens"]) == 262_144
    assert "tokenizer.ggml.tokens" not in shape_only and "tokenizer.ggml.token_type" not in shape_only
    assert shape_only["general.architecture"] == "gemma3"
    assert shape_only.items() <= full.items()


@pytest.mark.parametrize("name", ["qwen2.5-coder-0.5b-instruct", "gemma-3-270m"])
def test_vocab_size_is_known_without_the_vocabulary(name: str) -> None:
    path = model_path(name)
    config, _ = prepared.load_prepared(path)
    assert config.vocab_size == len(prepared.metadata(path)["tokenizer.ggml.tokens"]) > 150_000
