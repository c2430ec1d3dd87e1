"""Configuration and logging helpers."""
