"""L11 — The paged KV cache: fixed-size blocks, a block table per sequence, copy-on-write.

L04's KVCache reserves max_seq_len positions for every sequence up front. A
server does not know how long a request will run, so it reserves the maximum,
and most of it never holds a token (the vLLM paper measured 60-80 % of KV
memory wasted this way in earlier systems). Paging fixes it as an operating
system does: the cache is one pool of blocks of `block_size` token slots, a
sequence takes a block only when its previous one is full, and a block table
maps its logical blocks (token t is in logical block t // block_size) to
physical ones. Waste is at most one partly filled block per sequence.

Two sequences that share a prefix (a system prompt, beam search, parallel
samples) can share its blocks: `fork` copies the block table, not the data,
and counts references. A shared block is read-only; the first write into a
shared, partly filled block copies it first (copy-on-write), so the sibling
never sees the other's tokens.

Shapes: pages (num_layers, num_blocks, num_kv_heads, block_size, head_dim),
keys and values alike. Slot s = block_id * block_size + offset addresses one
token's (num_kv_heads, head_dim) vector in every layer. One block table per
sequence, shared by all layers.

Conventions (tutorial/CONVENTIONS.md):
- allocate(seq_id, n) reserves the next n positions of a sequence (a new id
  starts empty) and returns their slots; write(layer, slots, k, v) stores
  k, v (n, num_kv_heads, head_dim) there. A sequence's length counts allocated
  positions.
- Running out of blocks raises MemoryError naming the pool and leaves the
  cache exactly as it was (no block taken, no length changed).
- block_tables(ids) -> int32 (S, max_blocks), padded with -1; seq_lens(ids) ->
  int32 (S,).

Exercises: PagedKVCache.allocate, .fork, .free, .block_tables, .seq_lens and
paged_attention. Given: the constructor, write, num_free_blocks, and the
checks.
"""
import math
import numbers

import torch

from ._checks import FLOAT_DTYPES, check_positive_int, compute_dtype


class PagedKVCache:
    """A pool of KV blocks shared by many sequences of different lengths."""

    def __init__(self, num_layers, num_blocks, block_size, num_kv_heads, head_dim, dtype=torch.float32,
                 device=None):
        for name, value in (("num_layers", num_layers), ("num_blocks", num_blocks), ("block_size", block_size),
                            ("num_kv_heads", num_kv_heads), ("head_dim", head_dim)):
            check_positive_int(name, value)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be a floating dtype, got {dtype}")
        self.num_layers, self.num_blocks, self.block_size = num_layers, num_blocks, block_size
        self.num_kv_heads, self.head_dim, self.dtype = num_kv_heads, head_dim, dtype
        shape = (num_layers, num_blocks, num_kv_heads, block_size, head_dim)
        self.k_pages = torch.zeros(shape, dtype=dtype, device=device)
        self.v_pages = torch.zeros(shape, dtype=dtype, device=device)
        self.device = self.k_pages.device
        self._free = list(range(num_blocks - 1, -1, -1))  # a stack: pop() takes the lowest free id
        self._refs = [0] * num_blocks                       # how many block tables hold each block
        self._tables = {}                                   # seq_id -> [physical block ids]
        self._lens = {}                                     # seq_id -> tokens allocated

    @property
    def num_free_blocks(self):
        return len(self._free)

    def write(self, layer, slot_mapping, k, v):
        """Store k, v (n, num_kv_heads, head_dim) of one layer at slots (n,) from allocate."""
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or not 0 <= layer < self.num_layers:
            raise ValueError(f"layer must be an int in [0, {self.num_layers}), got {layer!r}")
        if not isinstance(slot_mapping, torch.Tensor) or slot_mapping.dim() != 1 or slot_mapping.is_floating_point():
            raise TypeError(f"slot_mapping must be a 1-D integer tensor, got {getattr(slot_mapping, 'shape', slot_mapping)}")
        expected = (slot_mapping.numel(), self.num_kv_heads, self.head_dim)
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != expected:
                raise ValueError(f"{name} must have shape (n, num_kv_heads, head_dim) = {expected}, "
                                 f"got {tuple(getattr(t, 'shape', ()))}")
        slots = slot_mapping.to(device=self.device, dtype=torch.long)
        if slots.numel() and not bool(((slots >= 0) & (slots < self.num_blocks * self.block_size)).all()):
            raise ValueError(f"slot_mapping holds slots outside [0, {self.num_blocks * self.block_size})")
        block, offset = slots // self.block_size, slots % self.block_size   # (n,), (n,)
        # pages[layer][block, :, offset, :] is one token's (Hkv, D): advanced indexing on dims 0 and 2
        self.k_pages[layer][block, :, offset] = k.to(device=self.device, dtype=self.dtype)
        self.v_pages[layer][block, :, offset] = v.to(device=self.device, dtype=self.dtype)

    def allocate(self, seq_id, num_tokens):
        """Reserve the next `num_tokens` positions of `seq_id`; return their slots (num_tokens,) int64.

        Takes a new block only when the sequence's last block is full. If the
        last block is shared with another sequence (after fork) and the new
        tokens would land in it, it is copied first (copy-on-write) and the
        copy replaces it in this sequence's table. MemoryError (naming the
        pool) if the free blocks do not suffice; the cache is then unchanged.
        """
        raise NotImplementedError("L11: implement PagedKVCache.allocate in model/paged_kv_cache.py (see tutorial/L11_paged_kv_cache/README.md)")

    def fork(self, src_id, dst_id):
        """dst_id becomes a copy of src_id that shares its blocks (reference counts + 1)."""
        raise NotImplementedError("L11: implement PagedKVCache.fork in model/paged_kv_cache.py (see tutorial/L11_paged_kv_cache/README.md)")

    def free(self, seq_id):
        """Drop seq_id; blocks no other sequence holds return to the pool."""
        raise NotImplementedError("L11: implement PagedKVCache.free in model/paged_kv_cache.py (see tutorial/L11_paged_kv_cache/README.md)")

    def block_tables(self, seq_ids):
        """int32 (S, max_blocks) physical block ids per sequence, padded with -1."""
        raise NotImplementedError("L11: implement PagedKVCache.block_tables in model/paged_kv_cache.py (see tutorial/L11_paged_kv_cache/README.md)")

    def seq_lens(self, seq_ids):
        """int32 (S,) tokens allocated per sequence."""
        raise NotImplementedError("L11: implement PagedKVCache.seq_lens in model/paged_kv_cache.py (see tutorial/L11_paged_kv_cache/README.md)")

    def _table(self, seq_id):
        if seq_id not in self._tables:
            raise ValueError(f"seq_id {seq_id!r} is not a sequence of this cache")
        return self._tables[seq_id]


def paged_attention(q, k_pages, v_pages, block_tables, seq_lens, scale=None):
    """One query per sequence against its paged keys and values (decoding).

    q (S, H, D); k_pages, v_pages (num_blocks, Hkv, block_size, D) — one
    layer's pages, e.g. cache.k_pages[layer]; block_tables int (S, max_blocks)
    (-1 padded); seq_lens int (S,). Sequence s attends to its first
    seq_lens[s] tokens: token t lives in block block_tables[s, t // block_size]
    at offset t % block_size. Query head h reads KV head h // (H // Hkv).
    Returns (S, H, D) in q's dtype; a sequence of length 0 gives zeros.
    """
    raise NotImplementedError("L11: implement paged_attention in model/paged_kv_cache.py (see tutorial/L11_paged_kv_cache/README.md)")


def _check_paged(q, k_pages, v_pages, block_tables, seq_lens):
    """Shapes, dtypes and ranges of paged_attention's arguments (given)."""
    for name, t, dims in (("q", q, 3), ("k_pages", k_pages, 4), ("v_pages", v_pages, 4)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != dims:
            raise ValueError(f"{name} must be {dims}-D, got shape {tuple(t.shape)}")
        if t.dtype not in FLOAT_DTYPES or t.dtype != q.dtype:
            raise TypeError(f"{name} must share q's floating dtype {q.dtype}, got {t.dtype}")
    if k_pages.shape != v_pages.shape:
        raise ValueError(f"k_pages {tuple(k_pages.shape)} and v_pages {tuple(v_pages.shape)} must have one shape")
    S, H, D = q.shape
    num_blocks, Hkv, bs, Dk = k_pages.shape
    if Dk != D:
        raise ValueError(f"q has head_dim {D} but k_pages has {Dk}")
    if H % Hkv:
        raise ValueError(f"q's {H} heads are not a multiple of k_pages' {Hkv} KV heads")
    for name, t, dims in (("block_tables", block_tables, 2), ("seq_lens", seq_lens, 1)):
        if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.dtype == torch.bool or t.dim() != dims:
            raise TypeError(f"{name} must be a {dims}-D integer tensor, got {getattr(t, 'dtype', type(t).__name__)} "
                            f"{tuple(getattr(t, 'shape', ()))}")
    if block_tables.shape[0] != S or seq_lens.shape[0] != S:
        raise ValueError(f"block_tables {tuple(block_tables.shape)} and seq_lens {tuple(seq_lens.shape)} need one "
                         f"row per query sequence ({S})")
    lens = seq_lens.to("cpu", torch.long)
    if bool((lens < 0).any()) or bool((lens > block_tables.shape[1] * bs).any()):
        raise ValueError(f"seq_lens {lens.tolist()} must lie in [0, max_blocks * block_size = "
                         f"{block_tables.shape[1] * bs}]")
    needed = (lens + bs - 1) // bs                                           # blocks each sequence reads
    tables = block_tables.to("cpu", torch.long)
    used = torch.arange(tables.shape[1])[None, :] < needed[:, None]
    if bool(((tables < 0) | (tables >= num_blocks))[used].any()):
        raise ValueError(f"block_tables refers to blocks outside [0, {num_blocks}) within seq_lens")
