"""free returns only the full blocks: the partly filled last block of every finished sequence leaks."""
MODULE = "paged_kv_cache"


def free(self, seq_id):
    """Drop seq_id; blocks no other sequence holds return to the pool."""
    if seq_id not in self._tables:
        raise ValueError(f"seq_id {seq_id!r} is not a sequence of this cache")
    table = self._tables.pop(seq_id)
    full = table[:self._lens[seq_id] // self.block_size]
    for block in reversed(full):
        self._refs[block] -= 1
        if self._refs[block] == 0:
            self._free.append(block)
    del self._lens[seq_id]


PagedKVCache.free = free
