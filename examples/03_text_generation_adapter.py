"""Text generation adapter: one prompt, a bounded answer."""

import os

from aigo.models.adapters import TextGenerationAdapter
from aigo.models.base import ModelConfig

# Create the configuration
config = ModelConfig(
    provider="wicore",
    model_name="qwen2.5-coder-0.5b-instruct",
    temperature=0.8,
    base_url=os.environ.get("AIGO_BASE_URL"),
)

# Create the text generation adapter
generator = TextGenerationAdapter(config)

# Generate text
response = generator.generate(
    prompt="写一首关于人工智能的短诗。",
    max_tokens=int(os.environ.get("AIGO_MAX_TOKENS", 200)),
)

print(response)
