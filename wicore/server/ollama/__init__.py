"""The Ollama-compatible surface (`/api`): its protocol (request and response models) and routes."""
