"""Build the Mojo kernels into CPython extension modules for the CPU at hand, cached by source hash.

Each kernel family is one file in `mojo_kernels/` with its own `PyInit_<name>`
(matmul, layers, attention, sampling), so a family can be built and tested on
its own.  The target is chosen from the CPU's feature flags, not its name (VMs
report odd model numbers, and Mojo's host detection misses AMX): AVX2 + FMA
(`x86-64-v3`), AVX-512 with VNNI (`x86-64-v4` + features), or AMX on top.
`WICORE_TARGET=portable` forces the AVX2 build, any other value is taken as a
`--target-cpu` name.  Every module is rebuilt when any `.mojo` file, the target
or the compiler changes; otherwise the cached `.so` is imported directly.  A
file lock keeps concurrent processes from building the same thing twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIR = REPO_ROOT / "mojo_kernels"
BUILD_DIR = Path(os.environ.get("WICORE_BUILD_DIR", REPO_ROOT / ".wicore-build"))
log = logging.getLogger("wicore.kernels")


class KernelBuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class Target:
    """A `mojo build` target: CPU name, extra features, and the ISA path the kernels take on it."""

    cpu: str
    features: str
    isa: str  # "avx2", "avx512-vnni", "amx": reported by benchmarks and /status

    @property
    def key(self) -> str:
        return f"{self.cpu}{self.features}"

    def __str__(self) -> str:
        return (
            f"{self.isa} path (--target-cpu {self.cpu}{' --target-features ' + self.features if self.features else ''})"
        )


PORTABLE = Target("x86-64-v3", "", "avx2")
_AVX512 = {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def host_targets(flags: set[str]) -> list[Target]:
    """Every target this CPU can run, best first (the portable AVX2 build last)."""
    targets = []
    if flags >= _AVX512 and "avx512_vnni" in flags:
        features = "+avx512vnni" + (",+avx512bf16" if "avx512_bf16" in flags else "")
        if {"amx_tile", "amx_int8", "amx_bf16"} <= flags:
            targets.append(Target("sapphirerapids", "", "amx"))
        targets.append(Target("x86-64-v4", features, "avx512-vnni"))
    targets.append(PORTABLE)
    return targets


def _default_target() -> Target:
    chosen = os.environ.get("WICORE_TARGET", "native")
    if chosen == "native":
        return host_targets(cpu_flags())[0]
    if chosen == "portable":
        return PORTABLE
    return Target(chosen, "", chosen)


TARGET = _default_target()


def _mojo() -> str:
    beside = Path(sys.executable).parent / "mojo"
    found = str(beside) if beside.exists() else shutil.which("mojo")
    if not found:
        raise KernelBuildError("the `mojo` compiler is not installed; run `make install` (pip install max)")
    return found


def source_hash(target: Target | None = None, source_dir: Path = SOURCE_DIR) -> str:
    target = target or TARGET
    h = hashlib.sha256()
    dirs = [SOURCE_DIR] if source_dir == SOURCE_DIR else [SOURCE_DIR, source_dir]
    for path in [p for d in dirs for p in sorted(d.glob("*.mojo"))]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    h.update(target.key.encode())
    try:
        from importlib.metadata import version

        h.update(version("mojo-compiler").encode())
    except Exception:  # the compiler came from somewhere other than pip
        pass
    return h.hexdigest()[:16]


def _output(name: str, target: Target, source_dir: Path = SOURCE_DIR) -> Path:
    return BUILD_DIR / source_hash(target, source_dir) / f"{name}.so"


def build(name: str, force: bool = False, target: Target | None = None, source_dir: Path = SOURCE_DIR) -> Path:
    """Compile kernel module `name` for `target` (default TARGET) if its cached build is stale.

    `source_dir` holds `name`.mojo when it is not one of the kernels (a benchmark's module); it
    imports from the kernels' folder all the same, and its files join the cache key."""
    target = target or TARGET
    out = _output(name, target, source_dir)
    if out.exists() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(BUILD_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists() and not force:
            return out
        tmp = out.with_suffix(".tmp.so")
        cmd = [
            _mojo(), "build", str(source_dir / f"{name}.mojo"), "--emit", "shared-lib",
            "-I", str(SOURCE_DIR), "--target-cpu", target.cpu, "-o", str(tmp),
        ]  # fmt: skip
        if target.features:
            cmd += ["--target-features", target.features]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            errors = "\n".join(line for line in proc.stderr.splitlines() if "rashpad" not in line)
            raise KernelBuildError(f"mojo build failed:\n{errors}")
        os.replace(tmp, out)
    return out


def build_all(force: bool = False, target: Target | None = None) -> list[Path]:
    """Every kernel module for `target` (default TARGET), compiled where stale.  The first build on a
    CPU type (or after a source change) takes minutes, so it says so when it starts and how long it
    took when done."""
    target = target or TARGET
    names = modules()
    stale = [n for n in names if force or not _output(n, target, SOURCE_DIR).exists()]
    if not stale:
        return [_output(n, target, SOURCE_DIR) for n in names]
    log.info("compiling the Mojo kernels (%s) for the %s, once for this CPU type: a few minutes",
             ", ".join(stale), target)  # fmt: skip
    started = time.monotonic()
    paths = [build(n, force, target, SOURCE_DIR) for n in names]
    log.info("compiled the Mojo kernels in %.0f s (cached in %s)", time.monotonic() - started, paths[0].parent)
    return paths


# Modules by target, then by name: load() runs hundreds of times per decoded token.
_loaded: dict[Target, dict[str, ModuleType]] = {}


def load(name: str) -> ModuleType:
    """Build the kernel modules for TARGET if needed (all at once: a process uses them all), then
    import module `name`."""
    modules = _loaded.setdefault(TARGET, {})
    if name not in modules:
        if not _output(name, TARGET, SOURCE_DIR).exists():
            build_all()
        modules[name] = import_extension(name, build(name, source_dir=SOURCE_DIR))
    return modules[name]


def import_extension(name: str, path: Path) -> ModuleType:
    """Import the built extension module `name` from `path`."""
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    _restore_environment()
    return module


# Loading a Mojo module sets these in the C environment (not in os.environ), e.g. PYTHONEXECUTABLE
# pointing at the system interpreter: every Python subprocess started afterwards would lose its venv.
_MOJO_ENV_VARS = ("PYTHONEXECUTABLE", "PYTHONPATH", "PYTHONHOME", "MOJO_PYTHON_LIBRARY")


def _restore_environment() -> None:
    for var in _MOJO_ENV_VARS:
        if var in os.environ:
            os.putenv(var, os.environ[var])
        else:
            os.unsetenv(var)


def modules() -> list[str]:
    """Kernel modules: the `.mojo` files that define a `PyInit_` entry point."""
    return sorted(p.stem for p in SOURCE_DIR.glob("*.mojo") if "def PyInit_" in p.read_text())


if __name__ == "__main__":
    # `make kernels`: silent when the cache is current, the two lines of build_all() otherwise.
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    build_all(force="--force" in sys.argv)
