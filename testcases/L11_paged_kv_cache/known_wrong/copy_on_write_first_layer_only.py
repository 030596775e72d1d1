"""Copy-on-write copies layer 0 only (pages[0, fresh] = pages[0, old]): the other layers of the fork read an empty block."""
MODULE = "paged_kv_cache"


def allocate(self, seq_id, num_tokens):
    """Reserve the next `num_tokens` positions of `seq_id`; return their slots (num_tokens,) int64.

    Takes a new block only when the sequence's last block is full. If the
    last block is shared with another sequence (after fork) and the new
    tokens would land in it, it is copied first (copy-on-write) and the
    copy replaces it in this sequence's table. MemoryError (naming the
    pool) if the free blocks do not suffice; the cache is then unchanged.
    """
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, numbers.Integral) or num_tokens < 0:
        raise ValueError(f"num_tokens must be an int >= 0, got {num_tokens!r}")
    table, length = self._tables.get(seq_id, []), self._lens.get(seq_id, 0)
    if num_tokens == 0:
        self._tables.setdefault(seq_id, table)
        self._lens.setdefault(seq_id, length)
        return torch.zeros(0, dtype=torch.long, device=self.device)
    bs = self.block_size
    new_blocks = math.ceil((length + num_tokens) / bs) - len(table)     # blocks beyond the table's end
    partial = length % bs != 0                                           # last block has free slots
    copy = partial and self._refs[table[-1]] > 1                         # ...and someone else holds it
    needed = new_blocks + copy
    if needed > len(self._free):
        raise MemoryError(
            f"the KV block pool is exhausted: sequence {seq_id!r} needs {needed} block(s) for {num_tokens} "
            f"token(s), {len(self._free)} of {self.num_blocks} are free (block_size {bs})")
    table = list(table)
    if copy:                                                             # copy-on-write of the shared block
        old, fresh = table[-1], self._free.pop()
        self.k_pages[0, fresh] = self.k_pages[0, old]
        self.v_pages[0, fresh] = self.v_pages[0, old]
        self._refs[old] -= 1
        self._refs[fresh] = 1
        table[-1] = fresh
    for _ in range(new_blocks):
        block = self._free.pop()
        self._refs[block] = 1
        table.append(block)
    self._tables[seq_id], self._lens[seq_id] = table, length + num_tokens
    positions = torch.arange(length, length + num_tokens)               # logical positions
    blocks = torch.tensor(table, dtype=torch.long)[positions // bs]      # logical -> physical block
    return (blocks * bs + positions % bs).to(self.device)                # slot = block * bs + offset


PagedKVCache.allocate = allocate
