"""Conversation memory: messages kept within a token budget."""

from aigo.modules.memory import ConversationMemory

# Create the memory
memory = ConversationMemory(max_tokens=4000)

# Add messages
memory.add_message("user", "你好，请介绍一下你自己。")
memory.add_message("assistant", "我是一个AI助手，可以帮助回答问题和完成各种任务。")

# The conversation as text
formatted_context = memory.get_formatted_context()
print(formatted_context)

# The messages
messages = memory.get_messages()
print(messages)

# Drop the oldest messages that no longer fit the token budget
memory.compress()
print(f"{len(memory.get_messages())} messages, about {memory.total_tokens()} tokens")
