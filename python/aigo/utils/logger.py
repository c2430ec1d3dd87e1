"""Loggers that write one JSON object per line, through structlog, with the stdlib logging API."""

from __future__ import annotations

import logging
from typing import IO

import structlog
from structlog.typing import Processor

from wicore.logging import json_handler

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
    logger = logging.getLogger(name)
    logger.handlers = [json_handler(_CHAIN, stream)]
    logger.setLevel(log_level.upper() if isinstance(log_level, str) else log_level)
    logger.propagate = False  # the root logger would print each line a second time
    return logger
