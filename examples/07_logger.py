"""Structured logging: JSON lines, with `extra` fields as keys."""

from aigo.utils.logger import setup_logger

# Create the logger
logger = setup_logger("my_module", log_level="INFO")

# Log
logger.info("这是一条信息日志")
logger.warning("这是一条警告日志")
logger.error("这是一条错误日志，出现了问题: %s", "连接失败")

# Structured fields
logger.info("用户操作", extra={"user_id": 123, "action": "login", "status": "success"})
