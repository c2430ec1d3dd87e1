"""The OpenAI-compatible surface: its protocol (request and response models) and routes."""
