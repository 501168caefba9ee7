"""KV-cache memory: a pool of fixed-size blocks, per-sequence block tables, reference counts, prefix cache.

Full blocks are named by a hash of their tokens chained to the previous block's hash, so two sequences with
the same prefix map to the same physical blocks. A block whose reference count drops to zero keeps its
contents and hash in an LRU free list: a later request with that prefix revives it, and allocation evicts
the least recently freed block first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from llmasos.kernel.sequence import Sequence


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None
    tokens: tuple[int, ...] = ()


class OutOfBlocksError(RuntimeError):
    pass


def block_hash(parent: int | str | None, tokens: tuple[int, ...]) -> int:
    return hash((parent, tokens))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[int, int] = {}  # hash -> block id
        self.prefix_queries = 0
        self.prefix_hits = 0

    # -- accounting -------------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self.free) / len(self.blocks)

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        total = seq.num_computed_tokens + num_new_tokens
        need = -(-total // self.block_size) - len(seq.block_table)
        # A write into a block that others share must first copy it.
        if (num_new_tokens and seq.block_table and seq.num_computed_tokens % self.block_size
                and self.blocks[seq.block_table[-1]].ref_count > 1):
            need += 1
        return max(need, 0)

    # -- allocation -------------------------------------------------------------------------------------
    def _take_free(self) -> Block:
        if not self.free:
            raise OutOfBlocksError("KV cache is full")
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None and self.cached.get(block.hash) == block_id:
            del self.cached[block.hash]  # evicted from the prefix cache
        block.hash, block.tokens, block.ref_count = None, (), 1
        return block

    def match_prefix(self, seq: Sequence) -> None:
        """Before a sequence's first chunk, reuse cached blocks for the longest shared full-block prefix."""
        if not self.enable_prefix_caching or seq.block_table or seq.num_computed_tokens:
            return
        bs = self.block_size
        # Keep at least one token to compute: its logits start the generation.
        max_blocks = (len(seq.token_ids) - 1) // bs
        # The chain starts from the adapter's name: the same tokens under another adapter have other K/V.
        parent: int | str | None = seq.adapter
        for i in range(max_blocks):
            tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            h = block_hash(parent, tokens)
            self.prefix_queries += 1
            block_id = self.cached.get(h)
            if block_id is None or self.blocks[block_id].tokens != tokens:
                break
            self.prefix_hits += 1
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free[block_id]
            block.ref_count += 1
            seq.block_table.append(block_id)
            parent = h
        seq.num_computed_tokens = len(seq.block_table) * bs
        seq.num_cached_prompt_tokens = seq.num_computed_tokens

    def allocate(self, seq: Sequence, num_new_tokens: int) -> list[tuple[int, int]]:
        """Make room for `num_new_tokens` more tokens. Returns (src, dst) block copies for copy-on-write."""
        if self.blocks_needed(seq, num_new_tokens) > len(self.free):
            raise OutOfBlocksError("not enough free KV blocks")
        copies = []
        bs = self.block_size
        if num_new_tokens and seq.block_table and seq.num_computed_tokens % bs:
            last = self.blocks[seq.block_table[-1]]
            if last.ref_count > 1:
                new = self._take_free()
                last.ref_count -= 1
                seq.block_table[-1] = new.block_id
                copies.append((last.block_id, new.block_id))
        total = seq.num_computed_tokens + num_new_tokens
        while len(seq.block_table) * bs < total:
            seq.block_table.append(self._take_free().block_id)
        return copies

    def commit_computed(self, seq: Sequence, old_computed: int) -> None:
        """After a step wrote K/V up to `seq.num_computed_tokens`, register the blocks that became full."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        first, last = old_computed // bs, seq.num_computed_tokens // bs
        parent = self.blocks[seq.block_table[first - 1]].hash if first else seq.adapter
        for i in range(first, last):
            block = self.blocks[seq.block_table[i]]
            if block.hash is None:
                block.tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
                block.hash = block_hash(parent, block.tokens)
                self.cached.setdefault(block.hash, block.block_id)
            parent = block.hash

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """The child shares every block of the parent; a later write to a shared block copies it first."""
        child.block_table = list(parent.block_table)
        child.num_computed_tokens = parent.num_computed_tokens
        for block_id in child.block_table:
            self.blocks[block_id].ref_count += 1

    def free_seq(self, seq: Sequence) -> None:
        # Tail blocks first, so they are evicted before the shared prefix blocks they extend.
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                if block.hash is None:
                    self.free[block_id] = None
                    self.free.move_to_end(block_id, last=False)  # no cached content: reuse first
                else:
                    self.free[block_id] = None
        seq.block_table = []
        seq.num_computed_tokens = 0

    def reset_prefix_cache(self) -> None:
        for block_id in list(self.free):
            block = self.blocks[block_id]
            block.hash, block.tokens = None, ()
        self.cached = {h: b for h, b in self.cached.items() if self.blocks[b].ref_count > 0}
