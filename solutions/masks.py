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
    ### BEGIN SOLUTION
    k_len = q_len if k_len is None else k_len
    check_non_negative_int("q_len", q_len)
    check_non_negative_int("k_len", k_len)
    query_position = torch.arange(q_len, device=device)[:, None] + (k_len - q_len)  # (Lq, 1)
    key_position = torch.arange(k_len, device=device)[None, :]  # (1, Lk)
    return key_position <= query_position
    ### END SOLUTION


def padding_mask(lengths, max_len=None, device=None):
    """(batch, max_len) bool, True for the first lengths[b] positions of row b
    (real tokens), False for the padding after them.

    lengths: a 1-D int tensor or a list of ints, each in [0, max_len]. An empty
        batch is valid: it gives a (0, max_len) mask.
    max_len: defaults to max(lengths) (0 for an empty batch).
    """
    ### BEGIN SOLUTION
    if isinstance(lengths, torch.Tensor):
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.dim() != 1:
            raise TypeError(f"lengths must be a 1-D integer tensor, got {lengths.dtype} of shape {tuple(lengths.shape)}")
        device = lengths.device if device is None else device
    elif not (isinstance(lengths, (list, tuple)) and all(_is_int(n) for n in lengths)):
        raise TypeError(f"lengths must be a list of ints or a 1-D integer tensor, got {lengths!r}")
    if max_len is not None and not _is_int(max_len):
        raise TypeError(f"max_len must be an int or None, got {type(max_len).__name__}")
    if max_len is not None and max_len < 0:
        raise ValueError(f"max_len must be >= 0, got {max_len}")
    lengths = torch.as_tensor(lengths, dtype=torch.long, device=device)
    if (lengths < 0).any():
        raise ValueError(f"lengths must be >= 0, got {lengths.tolist()}")
    longest = int(lengths.max()) if lengths.numel() else 0  # one host sync, to validate and to default max_len
    max_len = longest if max_len is None else int(max_len)
    if longest > max_len:
        raise ValueError(f"lengths holds {longest}, which does not fit in max_len={max_len}")
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]  # (B, max_len)
    ### END SOLUTION


def attention_mask_from_padding(key_padding, query_padding=None):
    """Turn (batch, L) padding masks (True = real token) into an attention mask.

    key_padding (B, Lk) -> (B, 1, 1, Lk): every query may attend to the real keys.
    With query_padding (B, Lq) -> (B, 1, Lq, Lk): padded queries attend to
    nothing, so their rows are fully masked (output 0 by the course convention).
    The head dim is 1 so the mask broadcasts over heads.
    """
    ### BEGIN SOLUTION
    _check_bool_mask("key_padding", key_padding, dims=2)
    mask = key_padding[:, None, None, :]  # (B, 1, 1, Lk)
    if query_padding is None:
        return mask
    _check_bool_mask("query_padding", query_padding, dims=2)
    if query_padding.shape[0] != key_padding.shape[0]:
        raise ValueError(f"query_padding has batch {query_padding.shape[0]}, key_padding has {key_padding.shape[0]}")
    if query_padding.device != key_padding.device:
        raise ValueError(f"query_padding is on {query_padding.device}, key_padding on {key_padding.device}")
    return mask & query_padding[:, None, :, None]  # (B, 1, Lq, 1) & (B, 1, 1, Lk) -> (B, 1, Lq, Lk)
    ### END SOLUTION


def combine_masks(*masks):
    """AND of boolean masks with broadcasting; None entries are ignored.
    Returns None if every mask is None. A position is visible only if every
    mask allows it (causal AND padding AND window ...).
    """
    ### BEGIN SOLUTION
    present = [m for m in masks if m is not None]
    for i, mask in enumerate(present):
        _check_bool_mask(f"masks[{i}]", mask)
    if not present:
        return None
    devices = {m.device for m in present}
    if len(devices) > 1:
        raise ValueError(f"masks must be on one device, got {sorted(str(d) for d in devices)}")
    try:
        torch.broadcast_shapes(*(m.shape for m in present))
    except RuntimeError:
        shapes = ", ".join(str(tuple(m.shape)) for m in present)
        raise ValueError(f"masks do not broadcast together: {shapes}") from None
    combined = present[0]
    for mask in present[1:]:
        combined = combined & mask
    return combined
    ### END SOLUTION


def mask_to_bias(mask, dtype=torch.float32):
    """Boolean mask (True = attend) -> additive mask of `dtype`: 0 where True,
    -inf where False. Use -inf, not -1e9 or finfo.min: a row that is entirely
    -1e9 softmaxes to a uniform average over padding, a row of -inf to zeros
    (and -1e9 itself overflows float16, whose largest magnitude is 65504).
    """
    ### BEGIN SOLUTION
    _check_bool_mask("mask", mask)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype (float16, bfloat16, float32, float64), got {dtype}")
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return bias.masked_fill(~mask, float("-inf"))
    ### END SOLUTION


class MaskCache:
    """Causal masks by (q_len, k_len, device), at most `max_entries` of them.

    Decoding asks for the same few shapes over and over; building each mask
    once saves an allocation and a kernel per step. The cache is a bounded LRU:
    when full, the least recently used mask is evicted, so serving many sequence
    lengths cannot grow memory without bound. `hits` and `misses` count lookups.
    Returned masks are shared: treat them as read-only.
    """

    def __init__(self, max_entries=32):
        ### BEGIN SOLUTION
        check_positive_int("max_entries", max_entries)
        self.max_entries = max_entries
        self._masks = OrderedDict()  # key -> mask, least recently used first
        self.hits = 0
        self.misses = 0
        ### END SOLUTION

    def causal(self, q_len, k_len=None, device=None):
        """causal_mask(q_len, k_len, device), from the cache when possible."""
        ### BEGIN SOLUTION
        k_len = q_len if k_len is None else k_len
        # Validate before the lookup: 3.0 == 3 and True == 1 as dict keys, so a
        # bad length would otherwise be served the mask cached for a good one.
        check_non_negative_int("q_len", q_len)
        check_non_negative_int("k_len", k_len)
        key = (q_len, k_len, _device_key(device))
        if key in self._masks:
            self.hits += 1
            self._masks.move_to_end(key)
            return self._masks[key]
        self.misses += 1
        mask = causal_mask(q_len, k_len, device=key[2])
        self._masks[key] = mask
        if len(self._masks) > self.max_entries:
            self._masks.popitem(last=False)  # evict the least recently used
        return mask
        ### END SOLUTION

    def __len__(self):
        ### BEGIN SOLUTION
        return len(self._masks)
        ### END SOLUTION

    def clear(self):
        """Drop every cached mask and reset the counters."""
        ### BEGIN SOLUTION
        self._masks.clear()
        self.hits = 0
        self.misses = 0
        ### END SOLUTION


### BEGIN SOLUTION
def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _device_key(device):
    """torch.device(device), with "cuda" resolved to "cuda:<current>" so that
    "cuda" and "cuda:0" share one cache entry."""
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _check_bool_mask(name, mask, dims=None):
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor (True = attend), got {mask.dtype}")
    if dims is not None and mask.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D, got shape {tuple(mask.shape)}")
### END SOLUTION
