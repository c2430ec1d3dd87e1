"""Vector store: add documents, then find the ones nearest a query."""

import os

from aigo.adapters.vector import VectorStore
from aigo.models.adapters import EmbeddingAdapter
from aigo.models.base import ModelConfig

# Create the embedding adapter
config = ModelConfig(provider="wicore", model_name="all-minilm-l6-v2", base_url=os.environ.get("AIGO_BASE_URL"))
embedding_adapter = EmbeddingAdapter(config)

# Create the vector store
vector_store = VectorStore(embedding_adapter, "data/vectors.db")

# Add documents
documents = [
    {"id": "doc1", "text": "人工智能是计算机科学的一个分支", "metadata": {"source": "wiki"}},
    {"id": "doc2", "text": "机器学习是人工智能的核心技术之一", "metadata": {"source": "book"}},
    {"id": "doc3", "text": "深度学习是一种基于神经网络的机器学习方法", "metadata": {"source": "paper"}},
]

vector_store.add_documents(documents)

# Search
results = vector_store.search("什么是机器学习", top_k=2)

# Print the results
for result in results:
    print(f"文档ID: {result['id']}")
    print(f"文本: {result['text']}")
    print(f"相似度: {result['similarity']:.4f}")
    print(f"元数据: {result['metadata']}")
    print("---")
