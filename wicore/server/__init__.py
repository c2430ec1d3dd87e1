"""The OpenAI-compatible HTTP server: `create_app(settings, engine)` builds the FastAPI app."""
