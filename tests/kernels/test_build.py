"""The kernel build cache and what loading a Mojo module does to the process."""

from __future__ import annotations

import logging
import re
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
    monkeypatch.setattr(build, "TARGET", build.Target("x86-64-v4", "+avx512vnni", "avx512-vnni"))
    assert build.source_hash() != first
    # A module outside the kernels' folder (a benchmark's) is keyed on both folders.
    extra = tmp_path / "benchmarks"
    extra.mkdir()
    (extra / "b.mojo").write_text("def g(): pass\n")
    with_extra = build.source_hash(source_dir=extra)
    assert with_extra != build.source_hash()
    (src / "a.mojo").write_text("def f(): pass\n")
    assert build.source_hash(source_dir=extra) != with_extra


def test_target_follows_the_feature_flags_not_the_cpu_name() -> None:
    avx2 = {"avx2", "fma", "bmi2"}
    avx512 = avx2 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
    assert [t.isa for t in build.host_targets(avx2)] == ["avx2"]
    assert [t.isa for t in build.host_targets(avx512)] == ["avx2"]  # no VNNI: the AVX2 path is the tested one
    zen4 = build.host_targets(avx512 | {"avx512_vnni", "avx512_bf16"})
    assert [(t.cpu, t.features) for t in zen4] == [("x86-64-v4", "+avx512vnni,+avx512bf16"), ("x86-64-v3", "")]
    # A VM's model number can hide AMX from Mojo's host detection; the flags show it.
    spr = build.host_targets(avx512 | {"avx512_vnni", "amx_tile", "amx_int8", "amx_bf16"})
    assert [t.isa for t in spr] == ["amx", "avx512-vnni", "avx2"]
    assert spr[0].cpu == "sapphirerapids"


def test_every_family_builds_and_is_listed() -> None:
    assert {"matmul", "layers", "attention", "sampling", "encoder"} <= set(build.modules())
    for name in build.modules():
        assert build.build(name).exists()


def test_child_processes_keep_the_virtualenv_after_a_module_loads() -> None:
    # Loading a Mojo module sets PYTHONEXECUTABLE in the C environment; build.load undoes it.
    build.load("layers")
    out = subprocess.run([sys.executable, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True)
    assert out.stdout.strip() == sys.prefix


TINY = """\
from std.os import abort
from std.python import PythonObject
from std.python.bindings import PythonModuleBuilder


def twice(x: PythonObject) raises -> PythonObject:
    return x * 2


@export
def PyInit_tiny() abi("C") -> PythonObject:
    try:
        var m = PythonModuleBuilder("tiny")
        m.def_function[twice]("twice", docstring="x * 2")
        return m.finalize()
    except e:
        abort(String("failed to create module tiny: ", e))
"""


def test_a_first_build_says_what_it_compiles_and_how_long_it_took(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A one-function module in a fresh build folder: the real compiler, in seconds rather than minutes.
    src = tmp_path / "mojo_kernels"
    src.mkdir()
    (src / "tiny.mojo").write_text(TINY)
    monkeypatch.setattr(build, "SOURCE_DIR", src)
    monkeypatch.setattr(build, "BUILD_DIR", tmp_path / "build")
    caplog.set_level(logging.INFO, logger="wicore.kernels")
    assert build.load("tiny").twice(21) == 42
    first, done = (r.getMessage() for r in caplog.records)
    assert first.startswith("compiling the Mojo kernels (tiny) for the ") and build.TARGET.isa in first
    assert re.fullmatch(r"compiled the Mojo kernels in \d+ s \(cached in .*/build/[0-9a-f]{16}\)", done)
    caplog.clear()
    assert [p.name for p in build.build_all()] == ["tiny.so"]
    assert not caplog.records  # cached: silent
