"""Build the Mojo kernels into CPython extension modules, cached by source hash.

Each kernel family is one file in `mojo_kernels/` with its own `PyInit_<name>`
(matmul, layers, attention, sampling), so a family can be built and tested on
its own.  Every module is rebuilt when any `.mojo` file (or the target CPU, or
the compiler) changes; otherwise the cached `.so` is imported directly.  A
file lock keeps concurrent processes from building the same thing twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIR = REPO_ROOT / "mojo_kernels"
BUILD_DIR = Path(os.environ.get("WICORE_BUILD_DIR", REPO_ROOT / ".wicore-build"))
# A portable AVX2 + FMA build by default; WICORE_TARGET_CPU=x86-64-v4 (or znver4, ...) for AVX-512 hosts.
TARGET_CPU = os.environ.get("WICORE_TARGET_CPU", "x86-64-v3")


class KernelBuildError(RuntimeError):
    pass


def _mojo() -> str:
    beside = Path(sys.executable).parent / "mojo"
    found = str(beside) if beside.exists() else shutil.which("mojo")
    if not found:
        raise KernelBuildError("the `mojo` compiler is not installed; run `make install` (pip install max)")
    return found


def source_hash() -> str:
    h = hashlib.sha256()
    for path in sorted(SOURCE_DIR.glob("*.mojo")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    h.update(TARGET_CPU.encode())
    try:
        from importlib.metadata import version

        h.update(version("mojo-compiler").encode())
    except Exception:  # the compiler came from somewhere other than pip
        pass
    return h.hexdigest()[:16]


def build(name: str, force: bool = False) -> Path:
    """Compile kernel module `name` if its cached build is stale; return the `.so` path."""
    out = BUILD_DIR / source_hash() / f"{name}.so"
    if out.exists() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(BUILD_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists() and not force:
            return out
        tmp = out.with_suffix(".tmp.so")
        cmd = [
            _mojo(), "build", str(SOURCE_DIR / f"{name}.mojo"), "--emit", "shared-lib",
            "-I", str(SOURCE_DIR), "--target-cpu", TARGET_CPU, "-o", str(tmp),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            errors = "\n".join(line for line in proc.stderr.splitlines() if "rashpad" not in line)
            raise KernelBuildError(f"mojo build failed:\n{errors}")
        os.replace(tmp, out)
    return out


_loaded: dict[str, ModuleType] = {}


def load(name: str) -> ModuleType:
    """Build kernel module `name` if needed, then import it."""
    if name not in _loaded:
        path = build(name)
        loader = importlib.machinery.ExtensionFileLoader(name, str(path))
        spec = importlib.util.spec_from_file_location(name, path, loader=loader)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
        _restore_environment()
        _loaded[name] = module
    return _loaded[name]


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
    for module_name in modules():
        print(build(module_name, force="--force" in sys.argv))
