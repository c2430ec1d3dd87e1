"""WiCore: local LLM inference, Python orchestration over Mojo kernels."""

import importlib.metadata

try:
    __version__ = importlib.metadata.version("wicore")
except importlib.metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
