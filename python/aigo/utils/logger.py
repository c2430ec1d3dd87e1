"""Loggers that write one JSON object per line, through structlog, with the stdlib logging API."""

from __future__ import annotations

import logging
import sys
from typing import IO

import structlog
from structlog.typing import Processor

_CHAIN: list[Processor] = [
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    # `extra={...}` lands on the LogRecord as attributes; this lifts them into the JSON object.
    structlog.stdlib.ExtraAdder(),
]


def setup_logger(name: str, log_level: str | int = "INFO", stream: IO[str] | None = None) -> logging.Logger:
    """A stdlib logger (so `%s` arguments and `extra=` work) whose lines are structlog-rendered JSON.

    Only this logger is configured: the application's root logger and structlog's global
    configuration are left alone. Calling it again for the same name replaces its handler.
    """
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_CHAIN,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    logger = logging.getLogger(name)
    logger.handlers = [handler]
    logger.setLevel(log_level.upper() if isinstance(log_level, str) else log_level)
    logger.propagate = False  # the root logger would print each line a second time
    return logger
