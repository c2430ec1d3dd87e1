"""Model runners: basic usage (generate, then stream)."""

import os

from aigo.models import get_model_runner
from aigo.models.base import ModelConfig

# Create the model configuration
config = ModelConfig(
    provider="wicore",
    model_name="qwen2.5-coder-0.5b-instruct",
    temperature=0.7,
    max_tokens=int(os.environ.get("AIGO_MAX_TOKENS", 2048)),
    base_url=os.environ.get("AIGO_BASE_URL"),
)

# Get the model runner
runner = get_model_runner(config)
runner.load()

# Text generation
response = runner.generate("解释Python中的装饰器模式。")
print(response)

# Streaming generation
for chunk in runner.stream_generate("请写一个快速排序算法。"):
    print(chunk, end="", flush=True)
print()
