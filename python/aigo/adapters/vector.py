"""Documents and their embeddings in one SQLite file, searched with sqlite-vec.

Layout: `documents` (id, text, metadata JSON) and a vec0 table `vectors` sharing its rowids, with
cosine distance; `store_info` remembers the embedding model and size so a file is never searched
with vectors from another model. WAL journaling lets other processes read while one writes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_vec

from aigo.models.adapters import EmbeddingAdapter


def _connect(path: Path) -> sqlite3.Connection:
    """A connection with sqlite-vec loaded. Some Python builds (pyenv's default among them) leave
    extension loading out of the stdlib sqlite3; pysqlite3-binary bundles a SQLite that has it."""
    if hasattr(sqlite3.Connection, "enable_load_extension"):
        conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
    else:
        try:
            from pysqlite3 import dbapi2  # type: ignore[import-not-found]
        except ImportError:
            raise RuntimeError(
                "this Python's sqlite3 cannot load extensions, which sqlite-vec needs; "
                "`pip install pysqlite3-binary` provides a SQLite that can"
            ) from None
        conn = dbapi2.connect(str(path), timeout=30, check_same_thread=False)
    conn.enable_load_extension(True)
    sqlite_vec.load(conn)
    conn.enable_load_extension(False)
    return conn


class VectorStore:
    def __init__(self, embedding_adapter: EmbeddingAdapter, path: str | Path) -> None:
        self.embedding = embedding_adapter
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = _connect(self.path)
        self._lock = threading.Lock()  # one connection, shared by this object's callers
        with self._lock, self._conn:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS documents "
                "(rowid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, text TEXT NOT NULL, metadata TEXT NOT NULL)"
            )
            self._conn.execute("CREATE TABLE IF NOT EXISTS store_info (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.dimensions: int | None = self._info("dimensions", int)
        model = self._info("model", str)
        if model is not None and model != embedding_adapter.config.model_name:
            raise ValueError(
                f"{self.path} holds embeddings of {model!r}; this adapter makes {embedding_adapter.config.model_name!r}"
            )

    def _info(self, key: str, kind: type) -> Any:
        row = self._conn.execute("SELECT value FROM store_info WHERE key = ?", (key,)).fetchone()
        return kind(row[0]) if row else None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _vectors(self, texts: list[str]) -> np.ndarray:
        vectors = np.asarray(self.embedding.embed_batch(texts), dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise ValueError(f"the embedding adapter returned shape {vectors.shape} for {len(texts)} texts")
        if self.dimensions is not None and vectors.shape[1] != self.dimensions:
            raise ValueError(f"embeddings have {vectors.shape[1]} dimensions; this store holds {self.dimensions}")
        return vectors

    def add_documents(self, docs: list[dict[str, Any]]) -> None:
        """Insert or replace documents ({"id", "text", "metadata"?}) by id.

        All embeddings are computed before anything is written, and all rows go in one transaction:
        a failure leaves the store as it was.
        """
        for doc in docs:
            if not isinstance(doc.get("id"), str) or not doc["id"] or not isinstance(doc.get("text"), str):
                raise ValueError(f"each document needs a non-empty string 'id' and a string 'text', got {doc!r}")
        if not docs:
            return
        vectors = self._vectors([d["text"] for d in docs])
        with self._lock, self._conn:  # the connection as a context manager: commit, or roll back on error
            if self.dimensions is None:
                self._create_vectors(vectors.shape[1])
            for doc, vector in zip(docs, vectors, strict=True):
                metadata = json.dumps(doc.get("metadata") or {}, ensure_ascii=False)
                rowid = self._conn.execute(
                    "INSERT INTO documents (id, text, metadata) VALUES (?, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET text = excluded.text, metadata = excluded.metadata "
                    "RETURNING rowid",
                    (doc["id"], doc["text"], metadata),
                ).fetchone()[0]
                # vec0 tables have no upsert: replace the row.
                self._conn.execute("DELETE FROM vectors WHERE rowid = ?", (rowid,))
                self._conn.execute("INSERT INTO vectors (rowid, embedding) VALUES (?, ?)", (rowid, vector.tobytes()))

    def _create_vectors(self, dimensions: int) -> None:
        self._conn.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS vectors "
            f"USING vec0(embedding float[{dimensions}] distance_metric=cosine)"
        )
        self._conn.executemany(
            "INSERT OR REPLACE INTO store_info (key, value) VALUES (?, ?)",
            [("dimensions", str(dimensions)), ("model", self.embedding.config.model_name)],
        )
        self.dimensions = dimensions

    def search(self, query: str, top_k: int = 5) -> list[dict[str, Any]]:
        """The top_k documents nearest the query, most similar first; similarity is the cosine."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if self.dimensions is None:
            self.dimensions = self._info("dimensions", int)  # another process may have filled the file
            if self.dimensions is None:
                return []
        vector = self._vectors([query])[0]
        with self._lock:
            rows = self._conn.execute(
                "SELECT d.id, d.text, d.metadata, v.distance FROM "
                "(SELECT rowid, distance FROM vectors WHERE embedding MATCH ? AND k = ?) AS v "
                "JOIN documents AS d ON d.rowid = v.rowid ORDER BY v.distance",
                (vector.tobytes(), top_k),
            ).fetchall()
        return [
            {"id": id_, "text": text, "similarity": 1.0 - distance, "metadata": json.loads(metadata)}
            for id_, text, metadata, distance in rows
        ]

    def delete(self, ids: list[str]) -> int:
        """Remove documents by id; returns how many existed."""
        with self._lock, self._conn:
            rowids = [
                row[0]
                for id_ in ids
                for row in self._conn.execute("SELECT rowid FROM documents WHERE id = ?", (id_,)).fetchall()
            ]
            for rowid in rowids:
                self._conn.execute("DELETE FROM documents WHERE rowid = ?", (rowid,))
                if self.dimensions is not None:
                    self._conn.execute("DELETE FROM vectors WHERE rowid = ?", (rowid,))
        return len(rowids)

    def count(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM documents").fetchone()[0]
