"""fork copies the block table but counts no reference: freeing either sequence frees the shared blocks, and no write is ever copied."""
MODULE = "paged_kv_cache"


def fork(self, src_id, dst_id):
    """dst_id becomes a copy of src_id that shares its blocks (reference counts + 1)."""
    if src_id not in self._tables:
        raise ValueError(f"src_id {src_id!r} is not a sequence of this cache")
    if dst_id in self._tables:
        raise ValueError(f"dst_id {dst_id!r} already exists; free it first")
    self._tables[dst_id] = list(self._tables[src_id])
    self._lens[dst_id] = self._lens[src_id]


PagedKVCache.fork = fork
