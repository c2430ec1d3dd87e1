"""Fixtures shared by the engine tests: the real model, loaded once per session."""

from __future__ import annotations

import pytest

from tests.helpers import model_path
from wicore.models.prepared import load_prepared
from wicore.models.transformer import Transformer
from wicore.tokenizer import Tokenizer

QWEN = "qwen2.5-coder-0.5b-instruct"


@pytest.fixture(scope="session")
def qwen() -> tuple[Transformer, Tokenizer]:
    """The qwen model's forward pass and tokenizer."""
    config, weights = load_prepared(model_path(QWEN))
    return Transformer(config, weights), Tokenizer.from_gguf(model_path(QWEN))
