"""VectorStore: a real SQLite file with sqlite-vec, reopened by other processes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from aigo.adapters.vector import VectorStore
from aigo.models import RunnerError
from aigo.models.adapters import EmbeddingAdapter
from aigo.models.base import ModelConfig
from tests.helpers import embedding_path
from tests.live_server import free_port

EMBEDDER = "all-minilm-l6-v2"
# English versions of the seed's three documents.
DOCS = [
    {"id": "doc1", "text": "Artificial intelligence is a branch of computer science", "metadata": {"source": "wiki"}},
    {"id": "doc2", "text": "Machine learning is one of the core technologies of AI", "metadata": {"source": "book"}},
    {"id": "doc3", "text": "Deep learning is a machine learning method based on neural networks", "metadata": {}},
]
QUERY = "What is machine learning?"

# Reopens the store in a fresh interpreter and prints what it finds.
READER = textwrap.dedent(
    """
    import json, sys
    from aigo.adapters.vector import VectorStore
    from aigo.models.adapters import EmbeddingAdapter
    from aigo.models.base import ModelConfig

    store = VectorStore(EmbeddingAdapter(ModelConfig(provider="wicore", model_name=sys.argv[2])), sys.argv[1])
    print(json.dumps({"count": store.count(), "results": store.search(sys.argv[3], top_k=2)}))
    """
)


@pytest.fixture(scope="module")
def adapter() -> EmbeddingAdapter:
    embedding_path(EMBEDDER)
    return EmbeddingAdapter(ModelConfig(provider="wicore", model_name=EMBEDDER))


@pytest.fixture
def store(adapter: EmbeddingAdapter, tmp_path: Path) -> Iterator[VectorStore]:
    with VectorStore(adapter, tmp_path / "data" / "vectors.db") as s:
        s.add_documents(DOCS)
        yield s


def read_in_new_process(path: Path, query: str = QUERY) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", READER, str(path), EMBEDDER, query], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_search_finds_machine_learning_first(store: VectorStore) -> None:
    results = store.search(QUERY, top_k=2)
    assert [r["id"] for r in results][0] == "doc2" and len(results) == 2
    assert results[0]["text"] == DOCS[1]["text"] and results[0]["metadata"] == {"source": "book"}
    assert 1 >= results[0]["similarity"] > results[1]["similarity"] > 0
    assert len(store.search(QUERY, top_k=10)) == 3


def test_upsert_and_delete(store: VectorStore) -> None:
    store.add_documents([{"id": "doc1", "text": "Machine learning: what it is", "metadata": {"v": 2}}])
    assert store.count() == 3
    top = store.search(QUERY, top_k=1)[0]
    assert top["id"] == "doc1" and top["metadata"] == {"v": 2}
    assert store.delete(["doc1", "unknown"]) == 1 and store.count() == 2
    assert [r["id"] for r in store.search(QUERY, top_k=5)] == ["doc2", "doc3"]
    with pytest.raises(ValueError, match="'id'"):
        store.add_documents([{"text": "no id"}])


def test_survives_restart_and_readers_run_beside_a_writer(store: VectorStore) -> None:
    # Another connection holds a write transaction open; with WAL, a new process still reads.
    writer = sqlite3.connect(store.path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO documents (id, text, metadata) VALUES ('doc4', 'uncommitted', '{}')")
    seen = read_in_new_process(store.path)
    writer.execute("ROLLBACK")
    writer.close()
    assert seen["count"] == 3 and seen["results"][0]["id"] == "doc2"
    assert seen["results"][0]["similarity"] == pytest.approx(store.search(QUERY, top_k=1)[0]["similarity"], abs=1e-6)


def test_failed_embedding_writes_nothing(store: VectorStore) -> None:
    down = ModelConfig(provider="openai", model_name=EMBEDDER, base_url=f"http://127.0.0.1:{free_port()}/v1")
    with VectorStore(EmbeddingAdapter(down), store.path) as other, pytest.raises(RunnerError, match="cannot reach"):
        other.add_documents([{"id": "doc1", "text": "replaced"}, {"id": "doc9", "text": "new"}])
    assert store.count() == 3 and store.search("computer science", top_k=1)[0]["text"] == DOCS[0]["text"]


def test_refuses_vectors_of_another_model(store: VectorStore) -> None:
    other = EmbeddingAdapter(ModelConfig(provider="wicore", model_name="some-other-embedder"))
    with pytest.raises(ValueError, match="holds embeddings of 'all-minilm-l6-v2'"):
        VectorStore(other, store.path)


def test_empty_store(adapter: EmbeddingAdapter, tmp_path: Path) -> None:
    with VectorStore(adapter, tmp_path / "empty.db") as empty:
        assert empty.count() == 0 and empty.search(QUERY) == []
