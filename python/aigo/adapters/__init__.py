"""Storage adapters: the SQLite vector store."""
