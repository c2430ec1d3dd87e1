"""A GGUF model turned once into the engine's own layout, then memory-mapped on every load.

Parsing GGUF metadata with `gguf.GGUFReader` (151k tokens and merges, element
by element) and repacking the blocks take seconds; doing it once per model file
and mapping the result makes a load take well under a second, and the weights
become shared, file-backed pages instead of private copies.  The cache lives in
`$WICORE_HOME/prepared/`, keyed by the file's name, size and modification time
and by FORMAT_VERSION (bump it when the layout changes).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wicore.kernels.weights import DenseWeight, QuantWeight, SplitWeight, Weight
from wicore.lazy import LazyModule
from wicore.models.config import ModelConfig, read_metadata
from wicore.models.registry import wicore_home
from wicore.models.weights import LayerWeights, ModelWeights, load_weights

if TYPE_CHECKING:
    import gguf
else:
    # Read only to prepare a model file (once); importing it costs every process ~6 MB.
    gguf = LazyModule("gguf")

FORMAT_VERSION = 3
# Files beside the cache that earlier versions wrote: the metadata in one file, the model's config.
_LEGACY_SUFFIXES = (".metadata.json", ".model.json")
log = logging.getLogger("wicore.models")


def _cache_dir(path: Path) -> Path:
    st = path.stat()
    return wicore_home() / "prepared" / f"{path.stem}-{st.st_size:x}-{st.st_mtime_ns:x}-v{FORMAT_VERSION}"


def _metadata_file(path: Path, suffix: str) -> Path:
    cache = _cache_dir(path)
    return cache.with_name(cache.name + suffix)


def _is_vocabulary(key: str, value: Any) -> bool:
    """The tokenizer's per-token arrays (tokens, scores, types, merges): most of the metadata's bytes."""
    return key.startswith("tokenizer.ggml.") and isinstance(value, list)


def remove_stale_caches(path: Path) -> None:
    """Delete this model's caches from older files or format versions, and abandoned temporaries.

    Processes still mapping a deleted cache keep their pages (unlinked files live until unmapped)."""
    current = _cache_dir(path).name
    mine = re.compile(rf"{re.escape(path.stem)}-[0-9a-f]+-[0-9a-f]+-v\d+(\..+)?")
    for entry in _cache_dir(path).parent.iterdir():
        match = mine.fullmatch(entry.name)
        if not match:
            continue
        writer = re.search(r"\.tmp(\d+)$", entry.name)
        if writer:
            if Path(f"/proc/{writer[1]}").exists():  # another process is writing it right now
                continue
        elif entry.name == current + (match[1] or "") and match[1] not in _LEGACY_SUFFIXES:
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _atomic_write(path: Path, data: bytes) -> None:
    # The thread too: two threads of one process may write the same file; the pid last, for remove_stale_caches.
    tmp = path.with_name(f"{path.name}.{threading.get_native_id()}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def derived_files(path: Path, suffixes: Sequence[str], build: Callable[[], Sequence[bytes]]) -> list[Path]:
    """Files made from the model's metadata (its tokenizer, say) beside its cache: `build` makes their
    contents once per model file, later calls only find them. Rebuilding them would mean parsing the whole
    vocabulary again: seconds, and tens of MB of short-lived objects whose memory the allocator keeps."""
    files = [_metadata_file(path, suffix) for suffix in suffixes]
    if not all(f.exists() for f in files):
        files[0].parent.mkdir(parents=True, exist_ok=True)
        for file, data in zip(files, build(), strict=True):
            _atomic_write(file, data)
    return files


def metadata(path: Path, reader: gguf.GGUFReader | None = None, vocabulary: bool = True) -> dict[str, Any]:
    """The GGUF file's key/value metadata, parsed once and then read from a JSON cache.

    vocabulary=False leaves out the tokenizer's per-token arrays, for callers that need only the
    model's shape: parsing a 262k-token vocabulary costs ~60 MB of short-lived Python objects."""
    # Not the one .metadata.json of earlier versions: those hold both parts, and old checkouts read it.
    rest, vocab = _metadata_file(path, ".header.json"), _metadata_file(path, ".vocab.json")
    if not (rest.exists() and vocab.exists()):
        log.info("reading the metadata and vocabulary of %s, once per model file", path.name)
        started = time.monotonic()
        meta = read_metadata(reader if reader is not None else gguf.GGUFReader(path))
        header = {k: v for k, v in meta.items() if not _is_vocabulary(k, v)}
        # The vocabulary's size stays in the header, under GGUF's own (optional) key for it.
        vocab_key = f"{meta.get('general.architecture', '')}.vocab_size"
        header.setdefault(vocab_key, len(meta.get("tokenizer.ggml.tokens", ())))
        words = {k: v for k, v in meta.items() if _is_vocabulary(k, v)}
        rest.parent.mkdir(parents=True, exist_ok=True)
        # The vocabulary first: the header's presence marks both complete.
        _atomic_write(vocab, json.dumps(words, ensure_ascii=False).encode())
        _atomic_write(rest, json.dumps(header, ensure_ascii=False).encode())
        log.info("read the metadata of %s in %.1f s; cached in %s", path.name, time.monotonic() - started,
                 rest.parent)  # fmt: skip
        return {**header, **words} if vocabulary else header
    meta = json.loads(rest.read_text(encoding="utf-8"))
    if vocabulary:
        meta.update(json.loads(vocab.read_text(encoding="utf-8")))
    return meta


def prepared_bytes(path: Path) -> int | None:
    """Bytes of the model's prepared weights (what a worker maps and reads on every forward pass); None
    before the first preparation."""
    cache = _cache_dir(path)
    if not (cache / "index.json").exists():
        return None
    return sum(f.stat().st_size for f in cache.iterdir())


def load_prepared(path: Path) -> tuple[ModelConfig, ModelWeights]:
    """(config, weights) of a GGUF file, preparing the cache on first use."""
    cache = _cache_dir(path)
    if not (cache / "index.json").exists():
        log.info("preparing %s for the engine: repacking its weights into %s, once per model file",
                 path.name, cache.parent)  # fmt: skip
        started = time.monotonic()
        _prepare(path, cache)
        log.info("prepared %s in %.1f s; later loads map it in well under a second", path.name,
                 time.monotonic() - started)  # fmt: skip
    config = ModelConfig.from_metadata(metadata(path, vocabulary=False))
    index = json.loads((cache / "index.json").read_text())

    def array(name: str) -> np.ndarray:
        return np.load(cache / f"{name}.npy", mmap_mode="r")

    def quant(name: str, spec: dict[str, Any]) -> QuantWeight:
        return QuantWeight(spec["format"], tuple(spec["shape"]), {p: array(f"{name}.{p}") for p in spec["planes"]})

    def weight(name: str) -> Weight:
        spec = index[name]
        if spec["kind"] == "dense":
            return DenseWeight(array(f"{name}.w"))
        if spec["kind"] == "split":
            return SplitWeight([quant(f"{name}.{i}", part) for i, part in enumerate(spec["parts"])])
        return quant(name, spec)

    def part(name: str, value_type: type) -> Any:
        if name not in index:
            return None
        return weight(name) if value_type is Weight else array(name)

    layers = [
        LayerWeights(**{f.name: part(f"blk.{i}.{f.name}", _kind(f)) for f in dataclasses.fields(LayerWeights)})
        for i in range(config.n_layers)
    ]
    token_embd = weight("token_embd")
    weights = ModelWeights(
        token_embd=token_embd,
        layers=layers,
        output_norm=array("output_norm"),
        output=weight("output") if "output" in index else token_embd,
    )
    return config, weights


def _kind(field: dataclasses.Field) -> type:
    return Weight if "Weight" in str(field.type) else np.ndarray


def _prepare(path: Path, cache: Path) -> None:
    reader = gguf.GGUFReader(path)
    config = ModelConfig.from_metadata(metadata(path, reader))
    weights = load_weights(reader, config)
    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    index: dict[str, Any] = {}

    def save_quant(name: str, value: QuantWeight) -> dict[str, Any]:
        for plane, a in value.planes.items():
            np.save(tmp / f"{name}.{plane}.npy", a)
        return {"kind": "quant", "format": value.fmt, "shape": list(value.shape), "planes": list(value.planes)}

    def save(name: str, value: Weight | np.ndarray | None) -> None:
        if value is None:
            return
        if isinstance(value, np.ndarray):
            np.save(tmp / f"{name}.npy", value)
            index[name] = {"kind": "array"}
        elif isinstance(value, DenseWeight):
            np.save(tmp / f"{name}.w.npy", value.w)
            index[name] = {"kind": "dense"}
        elif isinstance(value, SplitWeight):
            index[name] = {"kind": "split", "parts": [save_quant(f"{name}.{i}", p) for i, p in enumerate(value.parts)]}
        else:
            index[name] = save_quant(name, value)

    save("token_embd", weights.token_embd)
    save("output_norm", weights.output_norm)
    if weights.output is not weights.token_embd:
        save("output", weights.output)
    for i, layer in enumerate(weights.layers):
        for f in dataclasses.fields(LayerWeights):
            save(f"blk.{i}.{f.name}", getattr(layer, f.name))
    # index.json last: its presence marks a complete cache.
    (tmp / "index.json").write_text(json.dumps(index))
    shutil.rmtree(cache, ignore_errors=True)
    os.replace(tmp, cache)
    remove_stale_caches(path)
