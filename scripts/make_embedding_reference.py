"""Write tests/data/embedding_reference.json: sentence-transformers embeddings of a fixed set of sentences.

Needs torch and sentence-transformers, which are not project dependencies:

    pip install torch==2.13.0 && pip install --no-deps sentence-transformers scipy scikit-learn tqdm
    wicore models pull all-minilm-l6-v2
    python scripts/make_embedding_reference.py

The model is read from the pulled folder, offline; the embeddings are rounded to 6 decimals.
"""

from __future__ import annotations

import json
import os
from importlib.metadata import version
from pathlib import Path

from wicore.models import registry

MODEL = "all-minilm-l6-v2"
OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "embedding_reference.json"

SENTENCES = [
    # English, with the pairs whose similarities shared/notes/models.md quotes.
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "A man is riding a horse.",
    "Stock markets fell sharply today.",
    "The quick brown fox jumps over the lazy dog.",
    "What is machine learning?",
    "Machine learning is one of the core technologies of artificial intelligence.",
    "Artificial intelligence is a branch of computer science.",
    "Deep learning is a machine learning method based on neural networks.",
    "   Leading and trailing spaces, UPPER case and punctuation!!!   ",
    "",
    # Chinese: the AIgo document's examples.
    "这是一段示例文本。",
    "机器学习是什么？",
    "人工智能正在改变世界。",
    "深度学习是机器学习的一个分支。",
    "今天天气真好，我想去公园散步。",
    "什么是机器学习",
    "人工智能是计算机科学的一个分支",
    # Code.
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "SELECT name, COUNT(*) FROM users WHERE age > 21 GROUP BY name;",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "import numpy as np\nx = np.linspace(0, 1, 100)",
    # Longer than the model's 256-token window, so truncation is exercised.
    " ".join(["the embedding model truncates long inputs at its maximum sequence length"] * 30),
]


def main() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"  # the model is a local folder: never ask a hub
    from sentence_transformers import SentenceTransformer

    folder = registry.resolve_embedding(MODEL)
    model = SentenceTransformer(str(folder), device="cpu")
    vectors = model.encode(SENTENCES, batch_size=8, normalize_embeddings=True, convert_to_numpy=True)
    header = {
        "model": MODEL,
        "generator": f"sentence-transformers {version('sentence-transformers')}, torch {version('torch')}",
        "max_seq_length": model.max_seq_length,
    }
    items = [
        json.dumps({"text": text, "embedding": [round(float(v), 6) for v in vec]}, ensure_ascii=False)
        for text, vec in zip(SENTENCES, vectors, strict=True)
    ]
    # One item per line keeps the file readable and its diffs small.
    fields = "".join(f" {json.dumps(k)}: {json.dumps(v)},\n" for k, v in header.items())
    OUT.write_text("{\n" + fields + ' "items": [\n  ' + ",\n  ".join(items) + "\n ]\n}\n")
    print(f"wrote {len(SENTENCES)} embeddings of {vectors.shape[1]} dims to {OUT}")


if __name__ == "__main__":
    main()
