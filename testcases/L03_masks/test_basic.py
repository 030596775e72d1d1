"""L03 basic suite: causal and padding masks, attention masks from padding,
combining masks, boolean -> additive masks, and the mask cache.

Run: ./course test L03    (or: pytest testcases/L03_masks -m basic)
Expected masks come from coursekit.reference (torch.tril with the bottom-right
offset, arange < length) and torch's logical operators; attention through the
masks is checked with coursekit.reference.attention_ref (float64) and
torch.nn.functional.scaled_dot_product_attention.
"""
import pytest
import torch
import torch.nn.functional as F

from coursekit.reference import attention_ref, causal_mask_ref, padding_mask_ref
from coursekit.testing import assert_close, assert_same_mask, make_qkv, random_bool_mask

BOTTOM_RIGHT = (
    "causal alignment is bottom-right: query i sits at absolute position i + Lk - Lq and sees keys "
    "j <= i + Lk - Lq (torch.ones(Lq, Lk).tril(diagonal=Lk - Lq)); without the offset you get "
    "SDPA's top-left is_causal, which is wrong for a chunk of new queries against a KV cache")


def assert_on_device(t, device, what="mask"):
    assert t.device.type == torch.device(device).type, f"{what} is on {t.device}, expected {device}"


# -------------------------------------------------------------- causal_mask --

@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_causal_mask_square_is_lower_triangular(impl, device, n):
    got = impl.masks.causal_mask(n, device=device)
    assert_same_mask(got, causal_mask_ref(n), what=f"causal_mask({n})", hint=(
        "query i sees keys 0..i, the diagonal included (torch.tril): a strict j < i mask "
        "hides each token from itself, and True must mean 'may attend'"))
    assert_on_device(got, device)
    assert_same_mask(impl.masks.causal_mask(n, n, device=device), causal_mask_ref(n),
                     what=f"causal_mask({n}, {n})", hint="k_len=None means k_len = q_len")


@pytest.mark.parametrize("q_len,k_len", [(2, 4), (3, 8), (1, 6), (4, 2), (7, 3), (6, 1), (5, 9)],
                         ids=["2x4", "3x8", "1x6_decode", "4x2", "7x3", "6x1", "5x9"])
def test_causal_mask_rectangular_is_bottom_right(impl, device, q_len, k_len):
    got = impl.masks.causal_mask(q_len, k_len, device=device)
    assert_same_mask(got, causal_mask_ref(q_len, k_len), what=f"causal_mask({q_len}, {k_len})", hint=BOTTOM_RIGHT)
    assert_on_device(got, device)


def test_causal_mask_last_query_sees_every_key(impl):
    # The last query is always the newest token: with a KV cache it must see the
    # whole cache and itself, whatever Lq is.
    for q_len, k_len in [(1, 9), (3, 9), (9, 9)]:
        last = impl.masks.causal_mask(q_len, k_len)[-1]
        assert bool(last.all()), (
            f"causal_mask({q_len}, {k_len})[-1] = {last.int().tolist()}: the last query is the newest "
            f"position and must see all {k_len} keys. {BOTTOM_RIGHT}")


# ------------------------------------------------------------- padding_mask --

def test_padding_mask_from_a_list(impl, device):
    lengths = [3, 1, 5, 0, 5]
    got = impl.masks.padding_mask(lengths, device=device)
    assert_same_mask(got, padding_mask_ref(lengths), what=f"padding_mask({lengths})", hint=(
        "row b is True for its first lengths[b] positions (real tokens) and False after them "
        "(padding); max_len defaults to max(lengths). True marks a REAL token, not a pad"))
    assert_on_device(got, device)


def test_padding_mask_from_a_tensor_follows_its_device(impl, device):
    lengths = torch.tensor([2, 4, 1], device=device)
    got = impl.masks.padding_mask(lengths)
    assert_same_mask(got, padding_mask_ref([2, 4, 1]), what="padding_mask(tensor([2, 4, 1]))",
                     hint="accept a 1-D integer tensor as well as a list")
    assert_on_device(got, device, what="padding_mask of a tensor (device=None: the lengths' device)")


@pytest.mark.parametrize("as_tensor", [False, True], ids=["list", "tensor"])
def test_padding_mask_explicit_max_len(impl, device, as_tensor):
    lengths = [2, 4, 1]
    arg = torch.tensor(lengths, device=device) if as_tensor else lengths
    got = impl.masks.padding_mask(arg, max_len=7, device=device)
    assert_same_mask(got, padding_mask_ref(lengths, max_len=7), what="padding_mask([2, 4, 1], max_len=7)",
                     hint="max_len sets the width (the padded length), even when every sequence is shorter")
    assert_same_mask(impl.masks.padding_mask([3, 3], max_len=3), padding_mask_ref([3, 3], 3),
                     what="padding_mask([3, 3], max_len=3)", hint="a sequence of length max_len has no padding")


# ---------------------------------------------- attention_mask_from_padding --

def test_attention_mask_from_key_padding(impl, device):
    key_padding = padding_mask_ref([4, 2, 6], device=device)                     # (B, Lk) = (3, 6)
    got = impl.masks.attention_mask_from_padding(key_padding)
    assert_same_mask(got, key_padding[:, None, None, :], what="attention_mask_from_padding(key_padding)", hint=(
        "(B, Lk) -> (B, 1, 1, Lk): a head dim and a query dim of 1, so the mask broadcasts over "
        "every head and every query of (B, H, Lq, Lk); (B, 1, Lk) would line B up with the heads"))


def test_attention_mask_from_key_and_query_padding(impl, device):
    key_padding = padding_mask_ref([4, 2, 6], device=device)                     # (B, Lk) = (3, 6)
    query_padding = padding_mask_ref([3, 1, 2], max_len=3, device=device)         # (B, Lq) = (3, 3)
    got = impl.masks.attention_mask_from_padding(key_padding, query_padding)
    expected = query_padding[:, None, :, None] & key_padding[:, None, None, :]   # (B, 1, Lq, Lk)
    assert_same_mask(got, expected, what="attention_mask_from_padding(key_padding, query_padding)", hint=(
        "(B, 1, Lq, Lk): query i of row b may attend to key j iff both are real tokens; "
        "a padded query's row is entirely False"))


# ------------------------------------------------------------ combine_masks --

def test_combine_masks_is_and_with_broadcasting(impl, device):
    causal = causal_mask_ref(4, 6, device=device)                                 # (Lq, Lk)
    padding = padding_mask_ref([6, 3], device=device)[:, None, None, :]           # (B, 1, 1, Lk)
    got = impl.masks.combine_masks(causal, padding)
    assert_same_mask(got, causal & padding, what="combine_masks((Lq, Lk), (B, 1, 1, Lk))", hint=(
        "a key is visible only if EVERY mask allows it (logical AND, not OR), and the shapes "
        "broadcast: (4, 6) with (2, 1, 1, 6) gives (2, 1, 4, 6)"))
    third = random_bool_mask(2, 1, 4, 6, seed=1, device=device)
    assert_same_mask(impl.masks.combine_masks(causal, padding, third), causal & padding & third,
                     what="combine_masks of three masks", hint="AND every mask in, not just the first two")


def test_combine_masks_leaves_its_inputs_alone(impl, device):
    # The first mask is often a shared one (MaskCache hands the same tensor to
    # every caller): an in-place AND into it would change it for all of them.
    cache = impl.masks.MaskCache()
    causal = cache.causal(5, 5, device=device)
    padding = padding_mask_ref([5, 2], device=device)[:, None, None, :]
    square = random_bool_mask(5, 5, seed=4, device=device)
    originals = [t.clone() for t in (causal, padding, square)]
    impl.masks.combine_masks(causal, square)
    impl.masks.combine_masks(causal, padding)
    for name, t, before in zip(("first mask (from MaskCache)", "padding mask", "second mask"),
                               (causal, padding, square), originals):
        assert_same_mask(t, before, what=f"the {name} after combine_masks", hint=(
            "combine_masks must return a new tensor (a & b), not AND into its first argument in place (&=)"))
    assert_same_mask(cache.causal(5, 5, device=device), causal_mask_ref(5, 5, device=device),
                     what="the cached causal mask after combine_masks", hint="cached masks are shared: treat them as read-only")


def test_combine_masks_ignores_none(impl, device):
    mask = random_bool_mask(3, 5, seed=2, device=device)
    assert_same_mask(impl.masks.combine_masks(None, mask, None), mask, what="combine_masks(None, mask, None)",
                     hint="None means 'no mask' and is skipped")
    assert impl.masks.combine_masks(None, None) is None, "combine_masks(None, None) should return None: no mask at all"
    assert impl.masks.combine_masks() is None, "combine_masks() with no arguments should return None"


# ------------------------------------------------------------- mask_to_bias --

@pytest.mark.parametrize("dtype", [None, torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=["default", "float32", "float64", "float16", "bfloat16"])
def test_mask_to_bias_is_exactly_zero_and_neg_inf(impl, device, dtype):
    mask = random_bool_mask(2, 1, 5, 7, seed=3, device=device)
    bias = impl.masks.mask_to_bias(mask) if dtype is None else impl.masks.mask_to_bias(mask, dtype=dtype)
    want_dtype = torch.float32 if dtype is None else dtype
    assert bias.dtype == want_dtype, f"mask_to_bias(..., dtype={dtype}) returned {bias.dtype}, expected {want_dtype}"
    assert bias.shape == mask.shape, f"bias has shape {tuple(bias.shape)}, expected the mask's {tuple(mask.shape)}"
    assert_on_device(bias, device, what="bias")
    kept, dropped = bias[mask.to(bias.device)], bias[~mask.to(bias.device)]
    assert (kept == 0).all(), f"where the mask is True the bias must be exactly 0, found {kept[kept != 0][:3].tolist()}"
    assert torch.isneginf(dropped).all(), (
        f"where the mask is False the bias must be exactly -inf, found {dropped[~torch.isneginf(dropped)][:3].tolist()}"
        "\n  hint: use float('-inf'), not -1e9 or torch.finfo(dtype).min: a finite fill turns a fully masked "
        "row into a uniform average over the keys it may not see (and True = keep, False = drop)")


# ------------------------------------------------------ masks in attention --

def test_causal_and_padding_masks_applied_in_attention(impl, device):
    b, h, lq, lk, d = 3, 2, 5, 8, 16
    q, k, v = make_qkv(b, h, lq, lk, d, device=device, seed=4)
    lengths = [8, 6, 5]  # right padding; with bottom-right causal every query keeps a real key
    mask = impl.masks.combine_masks(impl.masks.causal_mask(lq, lk, device=device),
                                    impl.masks.attention_mask_from_padding(impl.masks.padding_mask(lengths, device=device)))
    expected_mask = causal_mask_ref(lq, lk) & padding_mask_ref(lengths)[:, None, None, :]
    expected, _ = attention_ref(q, k, v, expected_mask)
    hint = "the combined causal (bottom-right) and padding mask lets the wrong keys through"
    assert_close(F.scaled_dot_product_attention(q, k, v, attn_mask=mask), expected, hint=hint,
                 what="F.scaled_dot_product_attention with your boolean mask")
    bias = impl.masks.mask_to_bias(mask)
    assert_close(F.scaled_dot_product_attention(q, k, v, attn_mask=bias), expected, what="attention with your bias",
                 hint="mask_to_bias(mask) must encode the same mask: 0 where True, -inf where False")


def test_bias_of_a_fully_masked_row_gives_zeros(impl, device):
    q, k, v = make_qkv(1, 2, 4, 5, 8, device=device, seed=5)
    mask = torch.ones(4, 5, dtype=torch.bool, device=device)
    mask[1] = False  # query 1 may attend to nothing
    bias = impl.masks.mask_to_bias(mask)
    out, weights = attention_ref(q, k, v, bias)
    assert_close(weights[:, :, 1], torch.zeros(1, 2, 5), probabilities=True, dtype=torch.float32,
                 what="weights of the fully masked row", hint=(
                     "a row of -inf gets weights 0 (and output 0); a finite fill (-1e9, finfo.min) leaves the "
                     "row nonzero weights (1/Lk in float32, the unmasked softmax once the scores are float64): "
                     "the query averages values it was not allowed to see"))
    assert_close(out, attention_ref(q, k, v, mask)[0], dtype=torch.float32, hint="bias and boolean mask must agree")


# --------------------------------------------------------------- MaskCache --

def test_mask_cache_counts_hits_and_misses(impl, device):
    cache = impl.masks.MaskCache(max_entries=8)
    assert (cache.hits, cache.misses, len(cache)) == (0, 0, 0), "a new cache starts with hits = misses = 0 and is empty"
    first = cache.causal(4, 6, device=device)
    assert (cache.hits, cache.misses) == (0, 1), f"first lookup: expected 0 hits, 1 miss, got {cache.hits}, {cache.misses}"
    assert_same_mask(first, causal_mask_ref(4, 6), what="cache.causal(4, 6)", hint=BOTTOM_RIGHT)
    assert_on_device(first, device)
    again = cache.causal(4, 6, device=device)
    assert (cache.hits, cache.misses) == (1, 1), (
        f"same shape again: expected 1 hit, 1 miss, got {cache.hits}, {cache.misses} (is the key built the same way?)")
    assert_same_mask(again, causal_mask_ref(4, 6), what="cache.causal(4, 6), second time")
    cache.causal(4, device=device)
    cache.causal(4, 4, device=device)
    assert (cache.hits, cache.misses, len(cache)) == (2, 2, 2), (
        f"causal(4) then causal(4, 4): k_len=None means k_len=q_len, so the second is a hit; "
        f"expected (hits, misses, len) = (2, 2, 2), got {(cache.hits, cache.misses, len(cache))}")


def test_mask_cache_in_a_decoding_loop(impl, device):
    # Prefill a prompt of 5, then decode one token at a time: Lq = 1, Lk grows.
    cache = impl.masks.MaskCache(max_entries=64)
    steps = [(5, 5)] + [(1, k_len) for k_len in range(6, 16)]
    for _ in range(2):  # the second pass over the same shapes hits every time
        for q_len, k_len in steps:
            got = cache.causal(q_len, k_len, device=device)
            assert_same_mask(got, causal_mask_ref(q_len, k_len), what=f"cache.causal({q_len}, {k_len})", hint=(
                "the key must include k_len: during decoding q_len is always 1 while k_len grows, "
                "so a cache keyed by q_len alone hands back a mask for the wrong number of keys"))
    n = len(steps)
    assert (cache.hits, cache.misses, len(cache)) == (n, n, n), (
        f"{n} distinct shapes looked up twice: expected (hits, misses, len) = {(n, n, n)}, "
        f"got {(cache.hits, cache.misses, len(cache))}")


def test_mask_cache_evicts_the_least_recently_used(impl):
    cache = impl.masks.MaskCache(max_entries=3)
    trace = []

    def lookup(n):
        cache.causal(n)
        trace.append(n)
        return cache.hits, cache.misses

    for n in (1, 2, 3):
        lookup(n)
    assert lookup(1) == (1, 3), "1, 2, 3 then 1: the 1 is still cached (a hit)"
    lookup(4)  # full: evicts the least recently USED entry, which is 2 (1 was just used)
    assert len(cache) == 3, f"max_entries=3 but len(cache) = {len(cache)} after {trace}"
    hint = (f"after lookups {trace}: the least recently used entry is 2 (1 was used after it), so 2 must be "
            "the one evicted; evicting the oldest insertion (FIFO) or the newest is not LRU. "
            "A hit moves its entry to the most recent end (OrderedDict.move_to_end)")
    assert lookup(1) == (2, 4), hint
    assert lookup(3) == (3, 4), hint
    assert lookup(4) == (4, 4), hint
    assert lookup(2) == (4, 5), hint


def test_mask_cache_stays_bounded(impl):
    cache = impl.masks.MaskCache(max_entries=4)
    for n in range(1, 41):  # 40 different sequence lengths, e.g. a server seeing many prompt lengths
        assert_same_mask(cache.causal(n, n + 2), causal_mask_ref(n, n + 2), what=f"cache.causal({n}, {n + 2})")
        assert len(cache) <= 4, (
            f"len(cache) = {len(cache)} after {n} different shapes with max_entries=4: the cache must evict "
            "(least recently used first) so memory stays bounded")
    assert len(cache) == 4, f"len(cache) = {len(cache)}: a full cache should hold max_entries = 4 masks"
    assert (cache.hits, cache.misses) == (0, 40), f"40 distinct shapes: expected 0 hits, 40 misses, got {cache.hits}, {cache.misses}"
    assert cache.causal(40, 42) is not None and cache.hits == 1, "the most recent shape should still be cached"


def test_mask_cache_clear_resets(impl):
    cache = impl.masks.MaskCache()
    for n in (3, 3, 5):
        cache.causal(n)
    cache.clear()
    assert (cache.hits, cache.misses, len(cache)) == (0, 0, 0), (
        f"clear() must drop every mask and reset both counters; got (hits, misses, len) = "
        f"{(cache.hits, cache.misses, len(cache))}")
    assert_same_mask(cache.causal(3), causal_mask_ref(3), what="cache.causal(3) after clear()")
    assert (cache.hits, cache.misses) == (0, 1), "after clear() the first lookup is a miss"


def test_mask_cache_default_size(impl):
    cache = impl.masks.MaskCache()
    for n in range(1, 41):
        cache.causal(n)
    assert len(cache) == 32, f"MaskCache() should hold up to max_entries=32 masks, holds {len(cache)} after 40 shapes"


def test_attention_with_a_cached_mask(impl):
    # The same cached mask used at every step of a small batch of queries.
    cache = impl.masks.MaskCache()
    q, k, v = make_qkv(2, 2, 3, 7, 8, seed=6)
    for _ in range(2):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=cache.causal(3, 7))
        assert_close(out, attention_ref(q, k, v, causal_mask_ref(3, 7))[0], hint=BOTTOM_RIGHT)
    assert (cache.hits, cache.misses) == (1, 1), f"expected 1 hit and 1 miss, got {cache.hits}, {cache.misses}"
