"""L07 — Sliding-window attention: a band of W keys, O(L·W) work, a rolling cache.

Full causal attention lets position p read every key j <= p: a sequence of L
tokens costs L(L+1)/2 scores per head, and a decoder's KV cache grows with L.
A sliding window (Longformer's local attention, Mistral 7B's every layer) lets
position p read only its W most recent keys, its own included:

    key j is visible from absolute position p   iff   0 <= p - j < W

so every row of the score matrix holds at most W scores, a band of width W
under the diagonal. Work and memory become O(L·W) instead of O(L^2), and a
decoder needs to keep only the last W - 1 keys and values, whatever L is.
Information still travels further than W: after n stacked windowed layers a
position depends on tokens up to n·(W - 1) positions back (the receptive field).

Shapes (course-wide letters): q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv).

Conventions (tutorial/CONVENTIONS.md):
- A sliding window is always causal; W >= 1 counts the query's own key, so
  W = 1 attends to itself only, and W >= Lk is plain causal attention.
- Alignment is bottom-right, as for L03's causal mask: query i of Lq sits at
  absolute position p = i + Lk - Lq. With Lq < Lk the queries are the LAST Lq
  positions (decoding: the new tokens after a cache); with Lq > Lk the first
  Lq - Lk queries sit at negative positions and see no key: output 0, not NaN.
- Hugging Face's `sliding_window=W` (Mistral) and FlashAttention-2's
  `window_size=(W - 1, 0)` (W - 1 keys to the left, 0 to the right) mean the same.

Exercises: sliding_window_mask, sliding_window_attention,
RollingKVCache.__init__/update/reset. Given: RollingKVCache.held and .nbytes.
"""
import math
import numbers

import torch

from ._checks import (FLOAT_DTYPES, check_cache_update, check_positive_int, check_qkv, check_scale,
                      compute_dtype)


def sliding_window_mask(q_len, k_len, window, device=None):
    """(q_len, k_len) bool, True where query i may attend to key j.

    Query i sits at absolute position p = i + k_len - q_len (bottom-right, as
    L03's causal_mask) and sees key j iff 0 <= p - j < window: its own key and
    the window - 1 keys before it. Each row has at most `window` Trues;
    window >= k_len gives causal_mask(q_len, k_len). Queries with p < 0 (only
    when q_len > k_len) see nothing.

    q_len, k_len: ints >= 0 (0 gives an empty mask of shape (0, k_len) or
    (q_len, 0)); window: an int >= 1. TypeError for a non-int, ValueError for a
    negative length or a window below 1, naming the argument and its value.
    """
    ### BEGIN SOLUTION
    _check_length("q_len", q_len)
    _check_length("k_len", k_len)
    check_positive_int("window", window)
    query_position = torch.arange(q_len, device=device) + (k_len - q_len)  # (Lq,) absolute positions p
    key_position = torch.arange(k_len, device=device)  # (Lk,)
    return _in_window(query_position, key_position, window)  # (Lq, Lk)
    ### END SOLUTION


### BEGIN SOLUTION
def _check_length(name, value):
    """A sequence length: an int >= 0 (zero-length sequences are valid, and empty)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _in_window(query_position, key_position, window):
    """(Lq, Lk) bool from positions (Lq,) and (Lk,): the one definition of the band."""
    distance = query_position[:, None] - key_position[None, :]  # (Lq, 1) - (1, Lk) -> (Lq, Lk): p - j
    return (distance >= 0) & (distance < window)
### END SOLUTION


def sliding_window_attention(q, k, v, window, scale=None, block_size=64):
    """Causal sliding-window attention in O(L·W) work and memory.

    q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv) -> out (B, H, Lq, Dv),
    in q's dtype. Equals softmax(q k^T * scale + mask) v with
    mask = sliding_window_mask(Lq, Lk, window) (bottom-right: query i is at
    absolute position i + Lk - Lq), scale defaulting to 1/sqrt(D), but it
    never builds an (Lq, Lk) tensor. The queries are processed in blocks of
    `block_size`; the keys are cut into blocks of `block_size` too, and a query
    block computes scores only for the key blocks that intersect its band:
    queries at positions [p0, p1] need keys [p0 - window + 1, p1]. Those key
    blocks are taken as one contiguous slice (the "band"), scored, masked to
    the exact window and softmaxed. Per query block that is a
    (block_size, < window + 2·block_size) score tile, independent of L.

    Lq != Lk: bottom-right, as the mask. So decoding with RollingKVCache
    works: the n new queries of a chunk attend to the k_visible, v_visible
    that cache.update returned (held past entries, then the n new ones).
    Rows that see no key (position < 0, only when Lq > Lk) give 0, never NaN.
    Half-precision inputs are computed in float32; the output is in q's dtype.
    Plain torch ops throughout, so autograd differentiates it.

    Errors: q, k, v not 4-D float tensors with matching batch, heads, lengths,
    head_dim, dtype and device (TypeError/ValueError naming them); window or
    block_size not an int >= 1 (naming it); scale not a finite float.
    """
    ### BEGIN SOLUTION
    check_qkv(q, k, v)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, L, D), got shape {tuple(t.shape)}")
    check_positive_int("window", window)
    check_positive_int("block_size", block_size)
    check_scale(scale)

    B, H, Lq, D = q.shape
    Lk, Dv = k.shape[-2], v.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    out_dtype, work = q.dtype, compute_dtype(q.dtype)  # float32 for half inputs: scores, softmax and sums
    q, k, v = q.to(work), k.to(work), v.to(work)
    offset = Lk - Lq  # absolute position of query i is i + offset (bottom-right)

    out_blocks = []
    for q_start in range(0, Lq, block_size):  # range covers the last, partial block too
        q_end = min(q_start + block_size, Lq)
        first, last = q_start + offset, q_end - 1 + offset  # positions of the block's first and last query
        # -- the key blocks that intersect the band [first - window + 1, last] --
        k_lo = max(first - window + 1, 0) // block_size * block_size  # start of the first key block
        k_hi = min((last // block_size + 1) * block_size, Lk) if last >= 0 else 0  # end of the last one
        if k_hi <= k_lo:  # every query of the block sits before key 0: nothing to see
            out_blocks.append(q.new_zeros(B, H, q_end - q_start, Dv))
            continue
        q_blk = q[:, :, q_start:q_end]  # (B, H, bq, D)
        k_band, v_band = k[:, :, k_lo:k_hi], v[:, :, k_lo:k_hi]  # (B, H, nk, D), (B, H, nk, Dv)

        # -- compute qk on the band only --
        scores = q_blk @ k_band.transpose(-2, -1) * scale  # (B, H, bq, D) @ (B, H, D, nk) -> (B, H, bq, nk)
        keep = _in_window(torch.arange(first, last + 1, device=q.device),
                          torch.arange(k_lo, k_hi, device=q.device), window)  # (bq, nk): the exact band
        scores = scores.masked_fill(~keep, -math.inf)

        # -- softmax over the band; a row with no visible key gives 0, not NaN --
        row_max = scores.amax(dim=-1, keepdim=True)  # (B, H, bq, 1)
        row_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max)
        p = torch.exp(scores - row_max).masked_fill(~keep, 0.0)  # (B, H, bq, nk)
        row_sum = p.sum(dim=-1, keepdim=True)  # (B, H, bq, 1)
        row_sum = torch.where(row_sum > 0, row_sum, torch.ones_like(row_sum))
        out_blocks.append((p @ v_band) / row_sum)  # (B, H, bq, nk) @ (B, H, nk, Dv) -> (B, H, bq, Dv)

    if not out_blocks:  # Lq == 0: nothing to compute
        return q.new_zeros(B, H, 0, Dv, dtype=out_dtype)
    return torch.cat(out_blocks, dim=2).to(out_dtype)  # (B, H, Lq, Dv), in the input dtype
    ### END SOLUTION


class RollingKVCache:
    """The KV cache of one sliding-window attention layer: a fixed-size ring.

    RollingKVCache(batch_size, num_heads, window, head_dim, dtype=torch.float32, device=None)

    A query at position p sees keys p - window + 1 .. p. Its own key arrives
    with it, so between two steps the cache needs only the window - 1 most
    recent past keys and values, however long the sequence gets (Mistral's
    "rolling buffer cache"). __init__ allocates the two buffers once:
        self.k_cache, self.v_cache: (B, H, window - 1, D) of `dtype` on `device`
    (size 0 along dim 2 for window = 1: a token sees only itself), and sets
    self.seq_len = 0. Keep the arguments as attributes (batch_size, num_heads,
    window, head_dim, dtype, device). Arguments: positive ints (TypeError for a
    non-int, ValueError below 1, naming it), dtype a floating dtype (TypeError).

    seq_len is the number of positions seen since the start (or the last
    reset), NOT the number held: after 1000 tokens with window 8, seq_len is
    1000 and `held` is 7. The next token is at absolute position seq_len.

    Ring layout: absolute position t lives in slot t % (window - 1), so a new
    entry overwrites the entry window - 1 positions older, which no future
    query can see. Nothing is ever shifted; memory stays (B, H, window - 1, D).
    """

    def __init__(self, batch_size, num_heads, window, head_dim, dtype=torch.float32, device=None):
        ### BEGIN SOLUTION
        for name, value in (("batch_size", batch_size), ("num_heads", num_heads),
                            ("window", window), ("head_dim", head_dim)):
            check_positive_int(name, value)
        if dtype not in FLOAT_DTYPES:
            allowed = ", ".join(str(d).replace("torch.", "") for d in FLOAT_DTYPES)
            raise TypeError(f"dtype must be a floating dtype ({allowed}), got {dtype}")
        self.batch_size, self.num_heads, self.window, self.head_dim = batch_size, num_heads, window, head_dim
        shape = (batch_size, num_heads, window - 1, head_dim)  # (B, H, W - 1, D): the ring
        self.k_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.v_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.dtype, self.device = dtype, self.k_cache.device
        self.seq_len = 0
        ### END SOLUTION

    @property
    def held(self):
        """How many past positions the ring holds now: min(seq_len, window - 1)."""
        return min(self.seq_len, self.window - 1)

    @property
    def nbytes(self):
        """Bytes of the two ring buffers: 2 * B * H * (window - 1) * D * element size, for any seq_len."""
        return self.k_cache.nbytes + self.v_cache.nbytes

    def update(self, k, v):
        """Add n new positions; return what the n new queries need to see.

        k, v: (B, H, n, D) for absolute positions seq_len .. seq_len + n - 1,
        in the cache's batch, heads, head_dim, dtype and device. Returns
            k_visible, v_visible: (B, H, held + n, D)
        the `held` past entries the ring held before the call, oldest first,
        followed by the n new ones. Attending to them with bottom-right
        alignment, sliding_window_attention(q_new, k_visible, v_visible, window),
        gives every new query its whole window: the first new query (position
        seq_len) needs the window - 1 positions before it (fewer at the start).
        Then the ring keeps the last window - 1 positions seen (from the past
        and the new ones), and seq_len grows by n.

        The result is a new tensor (torch.cat of the unrolled ring and k), so
        it stays valid after later updates overwrite the ring.

        Errors (each leaves the cache unchanged): k or v not a 4-D float tensor,
        k.shape != v.shape, or batch, heads, head_dim, dtype or device other
        than the cache's: TypeError/ValueError naming k (or v) and both values.
        """
        ### BEGIN SOLUTION
        check_cache_update(self, k, v)
        n, held, ring = k.shape[-2], self.held, self.window - 1

        # -- read the held past, oldest first: positions seq_len - held .. seq_len - 1 --
        past = torch.arange(self.seq_len - held, self.seq_len, device=self.device)  # (held,)
        slots = past % ring if held else past  # ring slot of each position (nothing held: empty)
        k_visible = torch.cat([self.k_cache.index_select(2, slots), k], dim=2)  # (B, H, held + n, D)
        v_visible = torch.cat([self.v_cache.index_select(2, slots), v], dim=2)

        # -- write: the last min(n, window - 1) new positions overwrite the oldest slots --
        kept = min(n, ring)
        if kept:
            new = torch.arange(self.seq_len + n - kept, self.seq_len + n, device=self.device)  # (kept,)
            self.k_cache[:, :, new % ring] = k[:, :, n - kept:]  # distinct slots: kept <= window - 1
            self.v_cache[:, :, new % ring] = v[:, :, n - kept:]
        self.seq_len += n
        return k_visible, v_visible
        ### END SOLUTION

    def reset(self):
        """Start a new sequence: seq_len = 0; the buffers stay (nothing held is ever read again)."""
        ### BEGIN SOLUTION
        self.seq_len = 0
        ### END SOLUTION
