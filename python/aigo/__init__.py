"""AIgo: a Python SDK for local and remote LLMs, with WiCore as its engine."""
