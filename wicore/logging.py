"""Structured logging: one JSON object per line, for structlog loggers and stdlib ones (uvicorn, the engine).

Context bound with `structlog.contextvars` (the server binds `request_id`) lands on every line logged while
handling that request, whichever logger wrote it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from wicore.config import LoggingSettings

# Never written out, even if someone passes them to a logger by mistake.
_SECRET_KEYS = frozenset({"api_key", "api_keys", "authorization", "password", "token"})


def _redact(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for key in _SECRET_KEYS & event.keys():
        event[key] = "[redacted]"
    return event


def json_handler(pre_chain: list[Processor], stream: Any = None) -> logging.Handler:
    """A stdlib handler writing each record, after `pre_chain`, as one JSON line to `stream` (stderr)."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre_chain,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    return handler


def setup_logging(settings: LoggingSettings, stream: Any = None) -> None:
    """Send all logging to `stream` (stderr) as JSON lines at `settings.level`."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers = [json_handler(shared, stream)]
    root.setLevel(settings.level)
    # uvicorn installs its own handlers unless told not to; make sure its lines go through ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
