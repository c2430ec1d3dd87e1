"""Embedding adapter: one vector, a batch, and similarities to a query."""

import os

from aigo.models.adapters import EmbeddingAdapter
from aigo.models.base import ModelConfig

# Create the configuration
config = ModelConfig(provider="wicore", model_name="all-minilm-l6-v2", base_url=os.environ.get("AIGO_BASE_URL"))

# Create the embedding adapter
embedding = EmbeddingAdapter(config)

# Embed one text
vector = embedding.embed("这是一段示例文本。")
print(f"生成的向量维度: {len(vector)}")

# Similarities
texts = [
    "人工智能正在改变世界。",
    "深度学习是机器学习的一个分支。",
    "今天天气真好，我想去公园散步。",
]

vectors = embedding.embed_batch(texts)
similarities = embedding.compute_similarities("机器学习是什么？", texts)

for i, (text, sim) in enumerate(zip(texts, similarities, strict=True)):
    print(f"{i + 1}. {text} - 相似度: {sim:.4f}")
