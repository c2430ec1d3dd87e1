"""Chat adapter: a conversation over two turns."""

import os

from aigo.models.adapters import ChatAdapter
from aigo.models.base import ModelConfig

# Create the configuration
config = ModelConfig(
    provider="wicore",
    model_name="qwen2.5-coder-0.5b-instruct",
    base_url=os.environ.get("AIGO_BASE_URL"),
    max_tokens=int(os.environ.get("AIGO_MAX_TOKENS", 512)),
)

# Create the chat adapter
chat = ChatAdapter(config)

# Prepare the messages
messages = [
    {"role": "system", "content": "你是一个有用的助手。"},
    {"role": "user", "content": "什么是机器学习？"},
]

# Get the reply
response = chat.process(messages)
print(response)

# Add the reply and a new question, and go on
messages.append({"role": "assistant", "content": response})
messages.append({"role": "user", "content": "请详细解释监督学习和无监督学习的区别。"})

response = chat.process(messages)
print(response)
