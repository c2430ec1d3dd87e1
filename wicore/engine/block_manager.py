"""Hands out fixed-size KV-cache blocks to sequences (paged attention, vLLM style)."""

from __future__ import annotations


class OutOfBlocks(RuntimeError):
    pass


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        # Low block numbers first, so a lightly used cache touches few pages.
        self._free = list(range(num_blocks - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def blocks_needed(self, table: list[int], num_tokens: int) -> int:
        """Extra blocks a sequence with `table` needs to hold `num_tokens` tokens."""
        return max(0, -(-num_tokens // self.block_size) - len(table))

    def can_hold(self, table: list[int], num_tokens: int) -> bool:
        return self.blocks_needed(table, num_tokens) <= len(self._free)

    def grow(self, table: list[int], num_tokens: int) -> None:
        """Extend `table` in place so it holds `num_tokens` tokens."""
        need = self.blocks_needed(table, num_tokens)
        if need > len(self._free):
            raise OutOfBlocks(f"KV cache full: need {need} blocks, {len(self._free)} free")
        for _ in range(need):
            table.append(self._free.pop())

    def release(self, table: list[int]) -> None:
        self._free.extend(reversed(table))
        table.clear()
