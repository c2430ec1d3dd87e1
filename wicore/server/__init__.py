"""The HTTP server (OpenAI, AIgo and Ollama APIs): `server.app.create_app(settings, engine)` builds it."""
