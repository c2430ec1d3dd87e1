"""KV block bookkeeping: reference counts, the prefix cache's hash chain, eviction order."""

from __future__ import annotations

import pytest

from wicore.engine.block_manager import BlockManager, OutOfBlocks, chain_hashes


def test_hash_chain_depends_on_every_earlier_token() -> None:
    a = chain_hashes(list(range(40)), 16, [])
    assert len(a) == 2  # the 8 tokens past the second block do not make a block
    assert chain_hashes(list(range(32)), 16, []) == a
    assert chain_hashes(list(range(40)), 16, a[:1]) == a  # extending known hashes gives the same chain
    changed = chain_hashes([99] + list(range(1, 40)), 16, [])
    assert changed[0] != a[0] and changed[1] != a[1]  # same second block, different history
    assert chain_hashes(list(range(15)), 16, []) == []


def test_shared_block_is_freed_by_its_last_user() -> None:
    bm = BlockManager(8, 4)
    hashes = chain_hashes(list(range(8)), 4, [])
    first: list[int] = []
    bm.grow(first, 9)  # 3 blocks
    bm.register(first, hashes, 0)
    second: list[int] = []
    assert bm.match_prefix(second, hashes, max_blocks=2) == 2
    assert second == first[:2]
    assert bm.num_free == 5
    bm.release(first)
    assert bm.num_free == 6  # only first's private third block came back
    bm.release(second)
    assert bm.num_free == 8 and bm.num_cached == 2


def test_match_stops_at_the_first_miss_and_at_max_blocks() -> None:
    bm = BlockManager(8, 4)
    tokens = list(range(12))
    hashes = chain_hashes(tokens, 4, [])
    table: list[int] = []
    bm.grow(table, 12)
    bm.register(table, hashes[:1], 0)  # only the first block is known
    bm.release(table)
    other: list[int] = []
    assert bm.match_prefix(other, hashes, max_blocks=3) == 1
    bm.release(other)
    assert bm.match_prefix(other, hashes, max_blocks=0) == 0
    assert bm.match_prefix(other, chain_hashes([7] + tokens[1:], 4, []), max_blocks=3) == 0


def test_empty_blocks_are_reused_before_cached_ones_and_cached_ones_least_recent_first() -> None:
    bm = BlockManager(4, 2)
    old, new = chain_hashes([1, 2], 2, []), chain_hashes([3, 4], 2, [])
    a: list[int] = []
    b: list[int] = []
    bm.grow(a, 2)
    bm.register(a, old, 0)
    bm.grow(b, 2)
    bm.register(b, new, 0)
    bm.release(a)
    bm.release(b)
    scratch: list[int] = []
    bm.grow(scratch, 4)  # two empty blocks: both cached ones survive
    assert bm.num_cached == 2
    bm.grow(scratch, 6)  # one more: the least recently freed cached block goes
    assert bm.num_cached == 1
    probe: list[int] = []
    assert bm.match_prefix(probe, old, 1) == 0
    assert bm.match_prefix(probe, new, 1) == 1
    with pytest.raises(OutOfBlocks):
        bm.grow(scratch, 10)


def test_disabled_prefix_cache_never_matches() -> None:
    bm = BlockManager(4, 2, enable_prefix_caching=False)
    hashes = chain_hashes([1, 2], 2, [])
    table: list[int] = []
    bm.grow(table, 2)
    bm.register(table, hashes, 0)
    bm.release(table)
    assert bm.num_cached == 0 and bm.match_prefix(table, hashes, 1) == 0
