"""The kernel build cache and what loading a Mojo module does to the process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wicore.kernels import build


def test_cache_key_follows_the_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "mojo_kernels"
    src.mkdir()
    (src / "a.mojo").write_text("def f(): pass\n")
    monkeypatch.setattr(build, "SOURCE_DIR", src)
    first = build.source_hash()
    assert build.source_hash() == first
    (src / "a.mojo").write_text("def f(): return\n")
    assert build.source_hash() != first
    monkeypatch.setattr(build, "TARGET_CPU", "x86-64-v4")
    assert build.source_hash() != first


def test_every_family_builds_and_is_listed() -> None:
    assert {"matmul", "layers", "attention", "sampling", "encoder"} <= set(build.modules())
    for name in build.modules():
        assert build.build(name).exists()


def test_child_processes_keep_the_virtualenv_after_a_module_loads() -> None:
    # Loading a Mojo module sets PYTHONEXECUTABLE in the C environment; build.load undoes it.
    build.load("layers")
    out = subprocess.run([sys.executable, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True)
    assert out.stdout.strip() == sys.prefix
