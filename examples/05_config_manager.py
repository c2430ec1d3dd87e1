"""Configuration: load, read dotted keys, set, save."""

from aigo.utils.config import ConfigManager

# Load the configuration ($AIGO_CONFIG, ./configs/config.json or ~/.config/aigo/config.json)
config = ConfigManager.load_config()

# Read values
api_port = config.get("app.port", 8000)  # 8000 when not set
model_name = config.get("models.inference.name")
print(f"app.port = {api_port}, models.inference.name = {model_name}")

# Set a value
config.set("models.inference.temperature", 0.8)

# Save (atomically) to the file it was loaded from
path = config.save()
print(f"saved to {path}")
