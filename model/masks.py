"""L03 — Masks: causal, padding, combined, additive, cached.

Conventions (tutorial/CONVENTIONS.md):
- Boolean masks are True where a query MAY attend (as F.scaled_dot_product_attention;
  nn.MultiheadAttention's key_padding_mask uses the opposite polarity).
- Additive masks hold 0 (keep) or -inf (drop) and are added to the scores.
- Causal alignment is bottom-right: with Lq queries and Lk keys, query i sits at
  absolute position i + Lk - Lq and sees keys j <= i + Lk - Lq. With a KV cache
  the queries are the newest positions, so this is the alignment decoding needs.
- Masks broadcast to (..., Lq, Lk): a (Lq, Lk) mask serves every batch element
  and head; a (B, 1, 1, Lk) mask serves every query and head.
"""
import numbers
from collections import OrderedDict

import torch

from ._checks import check_non_negative_int, check_positive_int


def causal_mask(q_len, k_len=None, device=None):
    """(q_len, k_len) bool, True where key j is visible from query i:
    j <= i + (k_len - q_len). k_len defaults to q_len (the square, lower-triangular case).
    If k_len < q_len, the first q_len - k_len queries see no key at all.
    Zero lengths are valid (causal_mask(0) is a (0, 0) mask); negative ones raise ValueError.
    """
    raise NotImplementedError("L03: implement causal_mask in model/masks.py (see tutorial/L03_masks/README.md)")


def padding_mask(lengths, max_len=None, device=None):
    """(batch, max_len) bool, True for the first lengths[b] positions of row b
    (real tokens), False for the padding after them.

    lengths: a 1-D int tensor or a list of ints, each in [0, max_len]. An empty
        batch is valid: it gives a (0, max_len) mask.
    max_len: defaults to max(lengths) (0 for an empty batch).
    """
    raise NotImplementedError("L03: implement padding_mask in model/masks.py (see tutorial/L03_masks/README.md)")


def attention_mask_from_padding(key_padding, query_padding=None):
    """Turn (batch, L) padding masks (True = real token) into an attention mask.

    key_padding (B, Lk) -> (B, 1, 1, Lk): every query may attend to the real keys.
    With query_padding (B, Lq) -> (B, 1, Lq, Lk): padded queries attend to
    nothing, so their rows are fully masked (output 0 by the course convention).
    The head dim is 1 so the mask broadcasts over heads.
    """
    raise NotImplementedError("L03: implement attention_mask_from_padding in model/masks.py (see tutorial/L03_masks/README.md)")


def combine_masks(*masks):
    """AND of boolean masks with broadcasting; None entries are ignored.
    Returns None if every mask is None. A position is visible only if every
    mask allows it (causal AND padding AND window ...).
    """
    raise NotImplementedError("L03: implement combine_masks in model/masks.py (see tutorial/L03_masks/README.md)")


def mask_to_bias(mask, dtype=torch.float32):
    """Boolean mask (True = attend) -> additive mask of `dtype`: 0 where True,
    -inf where False. Use -inf, not -1e9 or finfo.min: a row that is entirely
    -1e9 softmaxes to a uniform average over padding, a row of -inf to zeros
    (and -1e9 itself overflows float16, whose largest magnitude is 65504).
    """
    raise NotImplementedError("L03: implement mask_to_bias in model/masks.py (see tutorial/L03_masks/README.md)")


class MaskCache:
    """Causal masks by (q_len, k_len, device), at most `max_entries` of them.

    Decoding asks for the same few shapes over and over; building each mask
    once saves an allocation and a kernel per step. The cache is a bounded LRU:
    when full, the least recently used mask is evicted, so serving many sequence
    lengths cannot grow memory without bound. `hits` and `misses` count lookups.
    Returned masks are shared: treat them as read-only.
    """

    def __init__(self, max_entries=32):
        raise NotImplementedError("L03: implement MaskCache.__init__ in model/masks.py (see tutorial/L03_masks/README.md)")

    def causal(self, q_len, k_len=None, device=None):
        """causal_mask(q_len, k_len, device), from the cache when possible."""
        raise NotImplementedError("L03: implement MaskCache.causal in model/masks.py (see tutorial/L03_masks/README.md)")

    def __len__(self):
        raise NotImplementedError("L03: implement MaskCache.__len__ in model/masks.py (see tutorial/L03_masks/README.md)")

    def clear(self):
        """Drop every cached mask and reset the counters."""
        raise NotImplementedError("L03: implement MaskCache.clear in model/masks.py (see tutorial/L03_masks/README.md)")


