"""Modules imported on first use, for dependencies that only some paths need: importing them up front
would cost every process their memory, a few MB each (llguidance, used by constrained requests only;
tokenizers, by byte-level BPE vocabularies; jinja2, by chat templates)."""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """Stands for the module `name`, importing it when an attribute is first read.

    Not importlib's LazyLoader: before Python 3.12 a second thread could see its module half-executed.
    import_module takes the import system's per-module lock, so concurrent first uses are safe, and
    later ones cost a sys.modules lookup."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)
