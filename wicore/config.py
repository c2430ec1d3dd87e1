"""One settings model for the server, the engine and the SDK.

Sources, later ones winning: defaults, a JSON config file (sections api, scheduler, model,
logging and cluster, e.g. `{"api": {"auth_enabled": true, "api_key": "..."}}`), then environment variables
`WICORE_<SECTION>__<KEY>` (e.g. `WICORE_API__API_KEY`, `WICORE_SCHEDULER__MAX_BATCH_SIZE`), then explicit
overrides (CLI flags).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ByteSize, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from wicore.models.kv_cache import KVDtype
from wicore.models.registry import DEFAULT_EMBEDDING, DEFAULT_MODEL

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(value: Any) -> float:
    """Seconds in a keep-alive as Ollama reads one: a number of seconds or a Go duration string ("5m",
    "1h30m", "-1s"); a bare number in a string counts as seconds too. Negative means forever."""
    if isinstance(value, bool):
        raise ValueError('expected a duration (e.g. "5m") or a number of seconds')
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        raise ValueError('expected a duration (e.g. "5m") or a number of seconds')
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    try:
        return sign * float(body)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise ValueError(f'invalid duration {value!r} (expected e.g. "5m", "1h30m", "-1" or seconds)')
    return sign * sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


# Seconds; negative: forever, 0: unload as soon as the last request using the model ends.
KeepAlive = Annotated[float, BeforeValidator(duration_seconds)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    auth_enabled: bool = False
    # One key or several (a list, or comma-separated in the environment).
    api_key: str | list[str] | None = None
    rate_limit_per_minute: int = Field(100, ge=0, description="per API key, else per client IP; 0 = off")
    max_request_bytes: int = Field(4 * 2**20, ge=1024, description="larger request bodies get 413, unread")
    forwarded_allow_ips: list[str] = Field(
        default_factory=list,
        description="proxies whose X-Forwarded-For/-Proto are believed (IPs or CIDRs, or *); empty: none, "
        "so the rate limit keys on the socket's peer address",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description='origins browsers may call the API from (["*"]: any); empty: no CORS headers',
    )

    @property
    def api_keys(self) -> frozenset[str]:
        if self.api_key is None:
            return frozenset()
        keys = self.api_key.split(",") if isinstance(self.api_key, str) else self.api_key
        return frozenset(k.strip() for k in keys if k.strip())


class SchedulerSettings(_Section):
    max_concurrent: int = Field(32, ge=1, description="sequences admitted (holding KV) at once")
    max_batch_size: int = Field(16, ge=1, description="sequences per forward pass")
    max_queue_size: int = Field(64, ge=0, description="requests waiting beyond max_concurrent before 429")
    max_batch_tokens: int = Field(256, ge=16, description="tokens per forward pass (chunked prefill budget)")
    request_timeout: float = Field(30.0, gt=0, description="seconds from arrival to the last token")
    aging_seconds: float = Field(5.0, gt=0, description="waiting this long raises a request one priority level")
    enable_prefix_caching: bool = Field(True, description="reuse the KV blocks of prompts' common prefixes")


class ModelSettings(_Section):
    name: str = Field(DEFAULT_MODEL, description="the default model (bundled name or GGUF path), loaded at start-up")
    preload: list[str] = Field(default_factory=list, description="more models loaded at start-up")
    embedding: str = Field(DEFAULT_EMBEDDING, description="the embedding model requests get when they name none")
    max_loaded: int = Field(3, ge=1, description="models loaded at once; loading one more unloads the least recent")
    max_memory: ByteSize = Field(
        ByteSize(0), description='estimated bytes all loaded models may take (e.g. "2GB"); 0 = no limit'
    )
    keep_alive: KeepAlive = Field(300.0, description='idle time before a model unloads ("5m", seconds; -1 = never)')
    max_model_len: int = Field(4096, ge=16)
    kv_cache_tokens: int = Field(32768, ge=16, description="KV cache budget in tokens, shared by all sequences")
    kv_cache_dtype: KVDtype = Field("float16", description="element type of cached K and V")


class ClusterSettings(_Section):
    """`wicore cluster`: replicas on one machine behind SGLang's Model Gateway (api.host/api.port are the
    gateway's; replica i listens on 127.0.0.1, port api.port + 1 + i)."""

    replicas: int = Field(2, ge=1, le=64)
    policy: Literal["cache_aware", "power_of_two", "round_robin", "random"] = Field(
        "cache_aware", description="the gateway's routing: cache_aware sends a shared prefix to the same replica"
    )
    log_dir: str = Field("logs/cluster", description="each replica's and the gateway's output, one file each")
    gateway_args: list[str] = Field(default_factory=list, description="more sglang-router flags, passed as is")


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    enable_request_logging: bool = True
    enable_performance_logging: bool = False

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WICORE_", env_nested_delimiter="__", extra="ignore")

    api: ApiSettings = ApiSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    model: ModelSettings = ModelSettings()
    logging: LoggingSettings = LoggingSettings()
    cluster: ClusterSettings = ClusterSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit values (file contents merged with CLI overrides) beat the environment here,
        # so load() layers them itself: see load().
        return (init_settings, env_settings)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from defaults < config file < WICORE_* environment < overrides."""
    file_values: dict[str, Any] = {}
    if path is not None:
        try:
            file_values = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"config file {path}: {e}") from None
        if not isinstance(file_values, dict):
            raise ValueError(f"config file {path}: expected a JSON object")
    from_env = Settings().model_dump(exclude_unset=True)  # only what the environment set
    values = _merge(_merge(file_values, from_env), overrides or {})
    return Settings(**values)
