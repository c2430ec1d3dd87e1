"""Higher-level building blocks: conversation memory."""
