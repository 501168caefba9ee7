"""Paged KV memory: allocation, reference counts, prefix cache hits and LRU eviction, copy-on-write forks."""

from __future__ import annotations

import pytest

from llmasos.kernel.block_manager import BlockManager, OutOfBlocksError
from llmasos.kernel.sampling_params import SamplingParams
from llmasos.kernel.sequence import Sequence

_ids = iter(range(10**6))


def seq(tokens: list[int]) -> Sequence:
    return Sequence(next(_ids), "r", 0, list(tokens), len(tokens), SamplingParams())


def compute_all(bm: BlockManager, s: Sequence) -> None:
    n = s.num_uncomputed
    bm.allocate(s, n)
    old = s.num_computed_tokens
    s.num_computed_tokens += n
    bm.commit_computed(s, old)


def test_allocate_covers_tokens_and_free_returns_blocks():
    bm = BlockManager(8, 4)
    s = seq(list(range(10)))
    compute_all(bm, s)
    assert len(s.block_table) == 3 and len(set(s.block_table)) == 3
    assert bm.num_free_blocks == 5
    assert all(bm.blocks[b].ref_count == 1 for b in s.block_table)
    bm.free_seq(s)
    assert bm.num_free_blocks == 8 and s.block_table == [] and s.num_computed_tokens == 0


def test_out_of_blocks_raises_and_allocates_nothing():
    bm = BlockManager(2, 4)
    s = seq(list(range(12)))
    with pytest.raises(OutOfBlocksError):
        bm.allocate(s, 12)
    assert bm.num_free_blocks == 2 and s.block_table == []


def test_prefix_cache_reuses_full_blocks_and_keeps_last_token_to_compute():
    bm = BlockManager(16, 4)
    a = seq(list(range(10)))  # two full blocks + 2 tokens
    compute_all(bm, a)
    b = seq(list(range(8)) + [99, 98, 97])  # shares the two full blocks
    bm.match_prefix(b)
    assert b.block_table == a.block_table[:2]
    assert b.num_computed_tokens == 8 == b.num_cached_prompt_tokens
    assert bm.blocks[a.block_table[0]].ref_count == 2
    # Identical prompt made only of full blocks: the last block is recomputed so the model yields logits.
    c = seq(list(range(8)))
    bm.match_prefix(c)
    assert c.num_computed_tokens == 4


def test_prefix_chain_hash_depends_on_everything_before():
    bm = BlockManager(16, 4)
    compute_all(bm, seq([1, 2, 3, 4, 5, 6, 7, 8, 0]))
    other = seq([9, 9, 9, 9, 5, 6, 7, 8, 0])  # same second block, different first block
    bm.match_prefix(other)
    assert other.num_computed_tokens == 0


def test_freed_blocks_stay_cached_until_evicted_lru():
    bm = BlockManager(4, 4)
    a = seq(list(range(9)))  # 3 blocks
    compute_all(bm, a)
    bm.free_seq(a)
    assert bm.num_free_blocks == 4
    b = seq(list(range(9)))
    bm.match_prefix(b)  # revived from the free list
    assert b.num_computed_tokens == 8 and bm.num_free_blocks == 2
    bm.free_seq(b)
    # A different request needing all 4 blocks evicts the cached ones.
    c = seq(list(range(100, 116)))
    compute_all(bm, c)
    d = seq(list(range(9)))
    bm.match_prefix(d)
    assert d.num_computed_tokens == 0
    assert bm.prefix_hits >= 2


def test_fork_shares_blocks_and_copies_on_write():
    bm = BlockManager(8, 4)
    parent = seq(list(range(6)))  # 1 full block + a half-full block
    compute_all(bm, parent)
    child = seq(list(range(6)))
    bm.fork(parent, child)
    assert child.block_table == parent.block_table
    assert all(bm.blocks[b].ref_count == 2 for b in parent.block_table)
    parent.token_ids.append(42)
    child.token_ids.append(43)
    assert bm.blocks_needed(child, 1) == 1
    copies = bm.allocate(child, 1)
    assert copies == [(parent.block_table[1], child.block_table[1])]
    assert child.block_table[0] == parent.block_table[0]
    assert child.block_table[1] != parent.block_table[1]
    assert bm.blocks[parent.block_table[1]].ref_count == 1
    assert bm.allocate(parent, 1) == []  # the parent now owns its block alone: no copy
    bm.free_seq(child)
    bm.free_seq(parent)
    assert bm.num_free_blocks == 8
