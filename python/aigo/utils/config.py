"""The SDK's view of the WiCore settings file, with dotted-key access.

The sections WiCore knows (api, scheduler, model, logging) are validated by the server's own
settings model, `wicore.config.Settings`, and WICORE_* environment variables override them exactly
as they do for the server. Other sections (the seed's "app", "models", ...) are kept as plain JSON
for the application's own use.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from wicore.config import Settings

_MISSING = object()


def search_path() -> list[Path]:
    """Where load_config() looks, first match wins: $AIGO_CONFIG, ./configs/config.json, the user's."""
    paths = [Path("configs/config.json"), Path.home() / ".config" / "aigo" / "config.json"]
    if env := os.environ.get("AIGO_CONFIG"):
        paths.insert(0, Path(env))
    return paths


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _split(key: str) -> list[str]:
    parts = key.split(".")
    if not key or not all(parts):
        raise KeyError(f"config key {key!r}: expected dotted names like 'api.port'")
    return parts


class ConfigManager:
    def __init__(self, data: dict[str, Any] | None = None, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._data: dict[str, Any] = copy.deepcopy(data or {})  # what save() writes: the file plus set()s
        self._overrides: dict[str, Any] = {}  # set() values, which beat the environment like CLI flags do
        self._env = Settings().model_dump(exclude_unset=True)  # only what WICORE_* variables set
        self.settings = self._validate(self._data, self._overrides)

    @classmethod
    def load_config(cls, path: str | Path | None = None) -> ConfigManager:
        """Read `path`, else the first file of search_path() that exists ($AIGO_CONFIG must exist if set).

        With no file found, the manager starts empty and save() writes to the user's config file.
        """
        if path is None and not os.environ.get("AIGO_CONFIG"):
            found = [p for p in search_path() if p.is_file()]
            if not found:
                return cls({}, search_path()[-1])
            path = found[0]
        path = Path(path if path is not None else os.environ["AIGO_CONFIG"])
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"config file {path}: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"config file {path}: expected a JSON object")
        return cls(data, path)

    def _validate(self, data: dict[str, Any], overrides: dict[str, Any]) -> Settings:
        # defaults < file < environment < set(), the order the server uses (see wicore.config.load)
        merged = _merge(_merge(data, self._env), overrides)
        return Settings(**{k: v for k, v in merged.items() if k in Settings.model_fields})

    def as_dict(self) -> dict[str, Any]:
        """Everything get() sees: validated WiCore sections (defaults filled in) and the other sections."""
        return _merge(_merge(self._data, self._overrides), self.settings.model_dump())

    def get(self, key: str, default: Any = None) -> Any:
        node: Any = self.as_dict()
        for part in _split(key):
            node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
            if node is _MISSING:
                return default
        return node

    def set(self, key: str, value: Any) -> None:
        """Set a value; WiCore's own keys are validated (ValueError, nothing changed, when invalid)."""
        parts = _split(key)
        update: dict[str, Any] = value
        for part in reversed(parts):
            update = {part: update}
        data, overrides = _merge(self._data, update), _merge(self._overrides, update)
        self.settings = self._validate(data, overrides)  # raises pydantic's ValidationError (a ValueError)
        self._data, self._overrides = data, overrides

    def save(self, path: str | Path | None = None) -> Path:
        """Write the file atomically (a temp file in the same folder, then os.replace): readers see the
        old file or the new one, never half of one."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("save(): no path given and the config was not loaded from a file")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._data, f, indent=2, ensure_ascii=False)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.path = target
        return target
