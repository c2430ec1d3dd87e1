"""Hands out fixed-size KV-cache blocks to sequences (paged attention, vLLM style), with prefix caching.

A block is full once `block_size` tokens are computed into it; a full block is then
registered under a hash of its tokens and of every token before it (a hash chain), so a
later sequence that starts with the same tokens reuses the block instead of recomputing
it. Blocks are reference-counted: a shared block is freed when its last sequence lets go,
and even then keeps its contents (and its hash) until the space is needed: free blocks are
reused holding nothing first, then cached ones, least recently used first.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np


class OutOfBlocks(RuntimeError):
    pass


def chain_hashes(token_ids: Sequence[int], block_size: int, known: list[bytes]) -> list[bytes]:
    """Extend `known` (hashes of the first blocks) to one hash per full block of `token_ids`.

    sha256 rather than Python's hash(): blocks are shared between clients, so a crafted
    prompt must not be able to collide with someone else's cached context.
    """
    hashes = list(known)
    for b in range(len(hashes), len(token_ids) // block_size):
        parent = hashes[-1] if hashes else b""
        tokens = np.asarray(token_ids[b * block_size : (b + 1) * block_size], dtype=np.int64)
        hashes.append(hashlib.sha256(parent + tokens.tobytes()).digest())
    return hashes


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self._refs = [0] * num_blocks
        # Free blocks in reuse order: empty ones at the front (low numbers first, so a lightly used
        # cache touches few pages), cached ones behind them from least to most recently freed.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cached: dict[bytes, int] = {}  # hash -> block holding those tokens
        self._hash_of: dict[int, bytes] = {}  # the reverse, for eviction

    @property
    def num_free(self) -> int:
        """Blocks not used by any sequence (cached ones included: they are evicted on demand)."""
        return len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._cached)

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
            block, _ = self._free.popitem(last=False)
            if (h := self._hash_of.pop(block, None)) is not None:
                del self._cached[h]  # evicted: its contents are about to be overwritten
            self._refs[block] = 1
            table.append(block)

    def release(self, table: list[int]) -> None:
        # Last blocks first: they are the least likely to be shared, so they are evicted first.
        for block in reversed(table):
            self._refs[block] -= 1
            if self._refs[block] == 0:
                self._free[block] = None
                if block not in self._hash_of:
                    self._free.move_to_end(block, last=False)
        table.clear()

    def match_prefix(self, table: list[int], hashes: list[bytes], max_blocks: int) -> int:
        """Append to the empty `table` the cached blocks for the longest run of `hashes`
        (at most `max_blocks`), taking a reference on each; returns how many."""
        assert not table, "match_prefix needs an empty block table"
        if not self.enable_prefix_caching:
            return 0
        for h in hashes[:max_blocks]:
            block = self._cached.get(h)
            if block is None:
                break
            if self._refs[block] == 0:
                del self._free[block]
            self._refs[block] += 1
            table.append(block)
        return len(table)

    def register(self, table: list[int], hashes: list[bytes], start: int) -> None:
        """Make blocks `start..len(hashes)-1` of `table` (full and computed) findable by their hash.
        A hash already cached in another block keeps that block: this one stays private."""
        if not self.enable_prefix_caching:
            return
        for b in range(start, len(hashes)):
            block, h = table[b], hashes[b]
            if h not in self._cached and block not in self._hash_of:
                self._cached[h] = block
                self._hash_of[block] = h
