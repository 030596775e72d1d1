"""L03 advanced suite: masks in real attention. Broadcasting over batch and
heads, padded batches that must equal their sequences run alone, causality
(future tokens change nothing), decoding alignment with a KV cache, fully
masked rows, half-precision biases, the cache's keys and bounds, random shapes
and bad input.

Run: ./course test L03 --advanced
Attention is computed by torch (F.scaled_dot_product_attention) or by
coursekit.reference.attention_ref (float64) with *your* masks, and compared
with the same attention run on unpadded inputs or with reference masks.
"""
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from coursekit.reference import attention_ref, causal_mask_ref, padding_mask_ref
from coursekit.testing import (
    assert_close,
    assert_no_nan,
    assert_same_mask,
    assert_rejects,
    make_qkv,
    randn,
    random_bool_mask,
)

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None)
BOTTOM_RIGHT = ("causal alignment is bottom-right: query i of Lq sits at absolute position i + Lk - Lq and sees "
                "keys j <= i + Lk - Lq (tril with diagonal=Lk - Lq)")


def sdpa(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# ------------------------------------------------- broadcasting in attention --

def test_causal_and_padding_broadcast_over_batch_and_heads(impl, device):
    b, h, lq, lk, d = 3, 4, 6, 9, 16
    q, k, v = make_qkv(b, h, lq, lk, d, device=device, seed=70)
    lengths = [9, 5, 7]
    causal = impl.masks.causal_mask(lq, lk, device=device)                                    # (Lq, Lk)
    keys = impl.masks.attention_mask_from_padding(impl.masks.padding_mask(lengths, device=device))  # (B, 1, 1, Lk)
    mask = impl.masks.combine_masks(causal, keys)
    assert tuple(mask.shape) == (b, 1, lq, lk), (
        f"combine_masks((Lq, Lk), (B, 1, 1, Lk)) has shape {tuple(mask.shape)}, expected (B, 1, Lq, Lk) = "
        f"{(b, 1, lq, lk)}: one mask per batch element, shared by the heads")
    # The reference mask, written out in full for every (batch, head) pair.
    full = torch.empty(b, h, lq, lk, dtype=torch.bool)
    for i in range(b):
        for j in range(h):
            full[i, j] = causal_mask_ref(lq, lk) & (torch.arange(lk) < lengths[i])[None, :]
    expected, _ = attention_ref(q, k, v, full)
    assert_close(sdpa(q, k, v, mask), expected, hint=(
        "the (B, 1, Lq, Lk) mask must mean the same thing for every head: batch element b keeps its own "
        "padding, and every row keeps the bottom-right causal band"))


# ------------------------------------- padded batch == sequences run alone --

LENGTHS = [7, 3, 5, 1]


def qkv_for_batch(device, seed, max_len=7, heads=2, head_dim=16):
    return make_qkv(len(LENGTHS), heads, max_len, max_len, head_dim, device=device, seed=seed)


@pytest.mark.parametrize("engine", ["sdpa", "attention_ref"])
def test_right_padded_keys_equal_each_sequence_alone(impl, device, engine):
    q, k, v = qkv_for_batch(device, seed=71)
    real = impl.masks.padding_mask(LENGTHS, device=device)                   # (B, L)
    mask = impl.masks.attention_mask_from_padding(real)                      # (B, 1, 1, L)
    attend = sdpa if engine == "sdpa" else (lambda *a: attention_ref(*a)[0])
    out = attend(q, k, v, mask)
    for b, n in enumerate(LENGTHS):
        alone = attend(q[b:b + 1, :, :n], k[b:b + 1, :, :n], v[b:b + 1, :, :n], None)  # no padding at all
        assert_close(out[b:b + 1, :, :n], alone, dtype=torch.float32, what=f"real tokens of sequence {b} (length {n})",
                     hint="padding keys must get exactly zero weight: padding_mask is True for the first "
                          "lengths[b] positions (real tokens), and the mask must broadcast as (B, 1, 1, Lk)")


@pytest.mark.parametrize("engine", ["sdpa", "attention_ref"])
def test_right_padded_causal_batch_equals_each_sequence_alone(impl, device, engine):
    q, k, v = qkv_for_batch(device, seed=72)
    real = impl.masks.padding_mask(LENGTHS, device=device)                   # (B, L)
    mask = impl.masks.combine_masks(impl.masks.causal_mask(7, device=device),
                                    impl.masks.attention_mask_from_padding(real, real))   # (B, 1, L, L)
    attend = sdpa if engine == "sdpa" else (lambda *a: attention_ref(*a)[0])
    out = attend(q, k, v, mask)
    for b, n in enumerate(LENGTHS):
        alone = attend(q[b:b + 1, :, :n], k[b:b + 1, :, :n], v[b:b + 1, :, :n],
                       causal_mask_ref(n, device=device))
        assert_close(out[b:b + 1, :, :n], alone, dtype=torch.float32, what=f"real tokens of sequence {b} (length {n})",
                     hint="causal AND padding: a real token sees the real tokens up to itself, nothing else")
        assert_close(out[b, :, n:], torch.zeros_like(out[b, :, n:]), what=f"padded queries of sequence {b}",
                     hint="with query_padding, a padded query attends to nothing, so its output is 0")


def test_left_padded_causal_batch_equals_each_sequence_alone(impl, device):
    # Left padding (generation batches): the real tokens are the LAST lengths[b]
    # positions. A padded query there sees only earlier padding under the causal
    # mask: its row is fully masked and must give zeros.
    q, k, v = qkv_for_batch(device, seed=73)
    real = impl.masks.padding_mask(LENGTHS, device=device).flip(-1)          # (B, L), pads first
    mask = impl.masks.combine_masks(impl.masks.causal_mask(7, device=device),
                                    impl.masks.attention_mask_from_padding(real))          # (B, 1, L, L)
    out, _ = attention_ref(q, k, v, mask)
    assert_no_nan(out, hint="left-padded queries under a causal mask see no key: their rows must give 0, not NaN")
    for b, n in enumerate(LENGTHS):
        alone, _ = attention_ref(q[b:b + 1, :, 7 - n:], k[b:b + 1, :, 7 - n:], v[b:b + 1, :, 7 - n:],
                                 causal_mask_ref(n))
        assert_close(out[b:b + 1, :, 7 - n:], alone, dtype=torch.float32, what=f"real tokens of sequence {b}",
                     hint="left padding shifts every real token right; causal AND padding must still give "
                          "each one exactly the real tokens up to itself")
        assert_close(out[b, :, :7 - n], torch.zeros(2, 7 - n, 16), dtype=torch.float32,
                     what=f"left-padded queries of sequence {b}", hint="a fully masked row gives output 0")


# --------------------------------------------------------------- causality --

@pytest.mark.parametrize("q_len,k_len", [(8, 8), (3, 8)], ids=["square", "chunk_of_3_over_8"])
def test_future_tokens_do_not_change_the_past(impl, device, q_len, k_len):
    q, k, v = make_qkv(2, 2, q_len, k_len, 8, device=device, seed=74)
    mask = impl.masks.causal_mask(q_len, k_len, device=device)
    before, _ = attention_ref(q, k, v, mask)
    offset = k_len - q_len
    for i in range(q_len):
        p = i + offset  # absolute position of query i
        k2, v2, q2 = k.clone(), v.clone(), q.clone()
        k2[..., p + 1:, :] = randn(*k2[..., p + 1:, :].shape, seed=75 + i, device=device) * 10
        v2[..., p + 1:, :] = randn(*v2[..., p + 1:, :].shape, seed=95 + i, device=device) * 10
        q2[..., i + 1:, :] = randn(*q2[..., i + 1:, :].shape, seed=115 + i, device=device) * 10
        after, _ = attention_ref(q2, k2, v2, mask)
        assert_close(after[..., :i + 1, :], before[..., :i + 1, :], dtype=torch.float64,
                     what=f"outputs of queries 0..{i} after changing every key/value after position {p}",
                     hint="a causal mask must hide every key after the query's own position. " + BOTTOM_RIGHT)
        changed = (after[..., i + 1:, :] - before[..., i + 1:, :]).abs().amax() if i + 1 < q_len else None
        if changed is not None:
            assert changed > 0, (
                f"the queries after {i} did not change although their visible keys did: the causal mask "
                "hides too much (is the diagonal or the Lk - Lq offset missing?)")


@pytest.mark.parametrize("q_len", [1, 3, 11])
def test_decoding_chunk_equals_last_rows_of_full_attention(impl, device, q_len):
    # With a KV cache, the newest q_len queries attend to all k_len keys seen so
    # far: their outputs must equal the last q_len rows of the full square attention.
    k_len = 11
    q_all, k, v = make_qkv(2, 3, k_len, k_len, 16, device=device, seed=76)
    full = sdpa(q_all, k, v, impl.masks.causal_mask(k_len, device=device))
    chunk = sdpa(q_all[..., -q_len:, :], k, v, impl.masks.causal_mask(q_len, k_len, device=device))
    assert_close(chunk, full[..., -q_len:, :], hint=BOTTOM_RIGHT + (
        "; F.scaled_dot_product_attention(..., is_causal=True) is top-left and fails exactly this"))
    assert_close(full, attention_ref(q_all, k, v, causal_mask_ref(k_len))[0], hint="the square case is plain tril")


def test_top_left_mask_would_break_decoding(impl):
    # A sanity check on the premise: SDPA's is_causal (top-left) disagrees with
    # the full attention here, the student's bottom-right mask does not.
    q_all, k, v = make_qkv(1, 1, 6, 6, 8, seed=77)
    full = attention_ref(q_all, k, v, causal_mask_ref(6))[0][..., -2:, :]
    top_left = F.scaled_dot_product_attention(q_all[..., -2:, :], k, v, is_causal=True)
    assert (top_left - full).abs().max() > 1e-3, "premise: top-left causal differs for Lq < Lk"
    ours = sdpa(q_all[..., -2:, :], k, v, impl.masks.causal_mask(2, 6))
    assert_close(ours, full, hint=BOTTOM_RIGHT)


# --------------------------------------------------------- fully masked rows --

def test_more_queries_than_keys_gives_empty_rows(impl, device):
    # Lq > Lk: queries 0 .. Lq-Lk-1 sit before the first key and see nothing.
    mask = impl.masks.causal_mask(5, 3, device=device)
    assert not mask[:2].any() and mask[2:].any(dim=-1).all(), (
        f"causal_mask(5, 3) = {mask.int().tolist()}: the first Lq - Lk = 2 rows must be empty and the others not. "
        + BOTTOM_RIGHT)
    q, k, v = make_qkv(2, 2, 5, 3, 8, device=device, seed=78)
    out, _ = attention_ref(q, k, v, mask)
    assert_close(out[..., :2, :], torch.zeros(2, 2, 2, 8), dtype=torch.float32, what="outputs of the empty rows")
    assert_close(sdpa(q, k, v, mask), out, hint="F.scaled_dot_product_attention gives zeros for empty rows too")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_bias_of_fully_masked_rows_gives_zeros_not_a_uniform_average(impl, device, dtype):
    q, k, v = make_qkv(2, 2, 6, 6, 8, device=device, seed=79, dtype=dtype)
    lengths = [6, 4]
    real = impl.masks.padding_mask(lengths, device=device)
    mask = impl.masks.attention_mask_from_padding(real, real)                 # padded queries: empty rows
    bias = impl.masks.mask_to_bias(mask, dtype=dtype)
    assert bias.dtype == dtype, f"mask_to_bias(..., dtype={dtype}) returned {bias.dtype}"
    hint = ("a fully masked row must give 0. A fill of -1e9 or torch.finfo(dtype).min is finite: the row keeps "
            "nonzero weights over keys it may not see (uniform in float32, the unmasked softmax when the scores "
            "are float64). Fill with -inf")
    out, weights = attention_ref(q, k, v, bias)
    assert_close(weights[1, :, 4:], torch.zeros(2, 2, 6), probabilities=True, dtype=dtype,
                 what="weights of the padded queries", hint=hint)
    assert_close(out[1, :, 4:], torch.zeros(2, 2, 8), dtype=dtype, what="outputs of the padded queries", hint=hint)
    # Scores and bias added in the bias's own dtype keep the -inf.
    scores = (q @ k.transpose(-2, -1)) * (8 ** -0.5) + bias                   # (B, H, Lq, Lk) in dtype
    assert torch.isneginf(scores[1, :, 4:]).all(), "scores + bias must stay -inf where masked, in every dtype"


def test_bias_matches_boolean_mask_through_sdpa(impl, device):
    q, k, v = make_qkv(2, 3, 7, 9, 16, device=device, seed=80)
    mask = random_bool_mask(2, 1, 7, 9, seed=80, device=device)
    mask[..., 0] = True
    assert_close(sdpa(q, k, v, impl.masks.mask_to_bias(mask)), sdpa(q, k, v, mask),
                 hint="an additive 0/-inf mask and the boolean mask it came from must give the same attention")


def test_mask_to_bias_half_precision_through_sdpa(impl, device):
    q, k, v = make_qkv(2, 2, 5, 8, 16, device=device, seed=81, dtype=torch.float16)
    mask = impl.masks.combine_masks(impl.masks.causal_mask(5, 8, device=device),
                                    impl.masks.attention_mask_from_padding(impl.masks.padding_mask([8, 6], device=device)))
    bias = impl.masks.mask_to_bias(mask, dtype=torch.float16)
    expected, _ = attention_ref(q, k, v, mask)
    assert_close(sdpa(q, k, v, bias), expected, hint="a float16 bias must drop the same keys as the boolean mask")


# ---------------------------------------------------------------- MaskCache --

def test_mask_cache_keys_are_q_len_k_len_and_device(impl, device):
    cache = impl.masks.MaskCache(max_entries=8)
    a = cache.causal(2, 5, device=device)
    b = cache.causal(2, 6, device=device)
    c = cache.causal(3, 5, device=device)
    assert (cache.misses, len(cache)) == (3, 3), (
        f"(2, 5), (2, 6), (3, 5) are three different masks: expected 3 misses and 3 entries, got "
        f"{cache.misses} misses and {len(cache)} entries (is the key missing k_len or q_len?)")
    for got, (lq, lk) in ((a, (2, 5)), (b, (2, 6)), (c, (3, 5))):
        assert tuple(got.shape) == (lq, lk) and torch.equal(got.cpu(), causal_mask_ref(lq, lk)), (
            f"cache.causal({lq}, {lk}) returned a mask of shape {tuple(got.shape)} / wrong values")
        assert got.device.type == torch.device(device).type, f"cached mask on {got.device}, asked for {device}"
    assert cache.causal(2, 5, device=device) is a, "a hit must return the cached tensor itself, not a copy"
    assert cache.hits == 1, f"expected 1 hit, got {cache.hits}"


def test_mask_cache_keeps_devices_apart(impl):
    # 'meta' tensors have a device but no data: a second device every machine has.
    cache = impl.masks.MaskCache(max_entries=8)
    on_cpu = cache.causal(4, 6, device="cpu")
    on_meta = cache.causal(4, 6, device="meta")
    assert on_meta.device.type == "meta", (
        f"cache.causal(4, 6, device='meta') returned a mask on {on_meta.device}: the device is part of the key, "
        "a mask cached for one device must not be handed out for another")
    assert on_cpu.device.type == "cpu" and (cache.misses, len(cache)) == (2, 2), (
        f"the same shape on two devices is two entries; got {cache.misses} misses, {len(cache)} entries")
    assert cache.causal(4, 6) is on_cpu and cache.hits == 1, "device=None means the CPU: expected a hit on the cpu entry"


@pytest.mark.gpu
def test_mask_cache_cuda_and_cuda_0_share_an_entry(impl):
    cache = impl.masks.MaskCache()
    first = cache.causal(3, 4, device="cuda")
    second = cache.causal(3, 4, device=torch.device("cuda", torch.cuda.current_device()))
    assert first.is_cuda and second is first, "'cuda' and 'cuda:<current>' are the same device"


def test_mask_cache_is_lru_against_a_model(impl):
    # A long, repetitive request stream (cycling sequence lengths) against an
    # OrderedDict model of an LRU cache.
    gen = torch.Generator().manual_seed(82)
    requests = [(int(a) % 7 + 1, int(a) % 7 + 1 + int(b)) for a, b in zip(torch.randint(0, 50, (300,), generator=gen),
                                                                            torch.randint(0, 3, (300,), generator=gen))]
    cache, model, hits, misses = impl.masks.MaskCache(max_entries=5), OrderedDict(), 0, 0
    for step, key in enumerate(requests):
        got = cache.causal(*key)
        if key in model:
            hits += 1
            model.move_to_end(key)
        else:
            misses += 1
            model[key] = True
            if len(model) > 5:
                model.popitem(last=False)
        assert (cache.hits, cache.misses, len(cache)) == (hits, misses, len(model)), (
            f"step {step}, request causal{key}: expected (hits, misses, len) = {(hits, misses, len(model))}, "
            f"got {(cache.hits, cache.misses, len(cache))}: an LRU cache evicts the entry unused for longest")
        assert torch.equal(got, causal_mask_ref(*key)), f"step {step}: wrong mask for causal{key}"


def test_mask_cache_bad_arguments(impl):
    masks = impl.masks
    for bad in (0, -3, 2.5, "8", None):
        assert_rejects(lambda bad=bad: masks.MaskCache(max_entries=bad), "max_entries")
    cache = masks.MaskCache()
    cache.causal(3)
    cache.causal(3, 1)
    # Checked on every lookup, hits included: 3.0 == 3 and True == 1 as dict keys.
    assert_rejects(lambda: cache.causal(3.0), "q_len")
    assert_rejects(lambda: cache.causal(3, 1.0), "k_len")
    assert_rejects(lambda: cache.causal(True), "q_len")
    assert_rejects(lambda: cache.causal(-1), "q_len")
    assert_rejects(lambda: cache.causal(2, -1), "k_len")


# ------------------------------------------------------------------ devices --

def test_masks_are_built_on_the_requested_device(impl, device):
    masks = impl.masks
    causal = masks.causal_mask(3, 5, device=device)
    real = masks.padding_mask(torch.tensor([5, 2], device=device))
    combined = masks.combine_masks(causal, masks.attention_mask_from_padding(real))
    bias = masks.mask_to_bias(combined, dtype=torch.float16)
    for name, t in (("causal_mask", causal), ("padding_mask", real), ("combine_masks", combined), ("mask_to_bias", bias)):
        assert t.device.type == torch.device(device).type, f"{name} returned a tensor on {t.device}, expected {device}"
    assert torch.equal(combined.cpu(), causal_mask_ref(3, 5) & padding_mask_ref([5, 2])[:, None, None, :])


# -------------------------------------------------------------- random shapes --

@PROPERTY
@given(q_len=st.integers(0, 40), k_len=st.integers(0, 40))
def test_causal_mask_on_random_shapes(impl, q_len, k_len):
    got = impl.masks.causal_mask(q_len, k_len)
    assert got.dtype == torch.bool and tuple(got.shape) == (q_len, k_len), (
        f"causal_mask({q_len}, {k_len}): dtype {got.dtype}, shape {tuple(got.shape)}")
    assert torch.equal(got, causal_mask_ref(q_len, k_len)), (
        f"causal_mask({q_len}, {k_len}) differs from the bottom-right reference. {BOTTOM_RIGHT}")
    visible = got.sum(dim=-1)  # keys per query: min(i + Lk - Lq + 1, Lk), at least 0
    expected = (torch.arange(q_len) + k_len - q_len + 1).clamp(0, k_len)
    assert torch.equal(visible, expected), f"keys visible per query: {visible.tolist()}, expected {expected.tolist()}"


@PROPERTY
@given(lengths=st.lists(st.integers(0, 30), min_size=1, max_size=8), extra=st.one_of(st.none(), st.integers(0, 5)),
       as_tensor=st.booleans())
def test_padding_mask_on_random_lengths(impl, lengths, extra, as_tensor):
    max_len = None if extra is None else max(lengths) + extra
    arg = torch.tensor(lengths) if as_tensor else lengths
    got = impl.masks.padding_mask(arg, max_len=max_len)
    expected = padding_mask_ref(lengths, max_len)
    assert got.dtype == torch.bool and torch.equal(got, expected), (
        f"padding_mask({lengths}, max_len={max_len}) = {got.int().tolist()}, expected {expected.int().tolist()}")
    assert got.sum(dim=-1).tolist() == lengths, "each row must hold exactly lengths[b] True values"


@PROPERTY
@given(data=st.data(), rank=st.integers(1, 4), n_masks=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_combine_masks_on_random_broadcastable_shapes(impl, data, rank, n_masks, seed):
    full = data.draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank), label="full shape")
    shapes = []
    for _ in range(n_masks):
        keep = data.draw(st.lists(st.booleans(), min_size=rank, max_size=rank), label="kept dims")
        drop = data.draw(st.integers(0, rank - 1), label="leading dims dropped")
        shapes.append([n if k else 1 for n, k in zip(full, keep)][drop:])
    masks = [random_bool_mask(*shape, seed=seed + i) for i, shape in enumerate(shapes)]
    got = impl.masks.combine_masks(*masks)
    expected = masks[0]
    for m in masks[1:]:
        expected = torch.logical_and(expected, m)
    assert tuple(got.shape) == tuple(expected.shape) and torch.equal(got, expected), (
        f"combine_masks of shapes {shapes} should be their broadcast AND, shape {tuple(expected.shape)}")


# ---------------------------------------------------------------- bad input --

@pytest.mark.parametrize("q_len,k_len", [(0, None), (0, 4), (3, 0)], ids=["0", "0x4", "3x0"])
def test_causal_mask_of_zero_length(impl, q_len, k_len):
    # Zero sizes are valid: an empty, correctly shaped mask (no query, or queries that see nothing).
    got = impl.masks.causal_mask(q_len, k_len)
    expected = causal_mask_ref(q_len, k_len)
    assert_same_mask(got, expected, what=f"causal_mask({q_len}, {k_len})",
                     hint="a zero length gives an empty mask of shape (q_len, k_len); only negative lengths are errors")
    cached = impl.masks.MaskCache().causal(q_len, k_len)
    assert_same_mask(cached, expected, what=f"MaskCache().causal({q_len}, {k_len})")


@pytest.mark.parametrize("lengths,max_len", [([], None), ([], 5), ("empty_tensor", 3)],
                         ids=["list", "list_max_len", "tensor_max_len"])
def test_padding_mask_of_an_empty_batch(impl, lengths, max_len):
    lengths = torch.zeros(0, dtype=torch.long) if lengths == "empty_tensor" else lengths
    got = impl.masks.padding_mask(lengths, max_len)
    expected = torch.zeros(0, 0 if max_len is None else max_len, dtype=torch.bool)
    assert_same_mask(got, expected, what=f"padding_mask of an empty batch, max_len={max_len}",
                     hint="an empty batch is valid: shape (0, max_len), max_len defaulting to 0")


def test_causal_mask_bad_lengths(impl):
    causal = impl.masks.causal_mask
    assert_rejects(lambda: causal(-2), "q_len")
    assert_rejects(lambda: causal(3, -1), "k_len")
    assert_rejects(lambda: causal(2.5), "q_len")
    assert_rejects(lambda: causal(3, 4.0), "k_len")
    assert_rejects(lambda: causal(True), "q_len")
    assert_rejects(lambda: causal("4"), "q_len")


def test_padding_mask_bad_lengths(impl):
    padding = impl.masks.padding_mask
    assert_rejects(lambda: padding([3, -1, 2]), "lengths")
    assert_rejects(lambda: padding(torch.tensor([3, -1])), "lengths")
    assert_rejects(lambda: padding([3, 5], max_len=4), "max_len", "lengths")  # either one is at fault
    assert_rejects(lambda: padding(torch.tensor([3, 5]), max_len=4), "max_len", "lengths")
    assert_rejects(lambda: padding([1.5, 2]), "lengths")
    assert_rejects(lambda: padding(torch.tensor([1.0, 2.0])), "lengths")
    assert_rejects(lambda: padding(torch.tensor([[1, 2]])), "lengths")
    assert_rejects(lambda: padding([2], max_len=-1), "max_len")
    assert_rejects(lambda: padding([2, 3], max_len=4.5), "max_len")
    assert_rejects(lambda: padding("3"), "lengths")


def test_attention_mask_from_padding_bad_input(impl):
    from_padding = impl.masks.attention_mask_from_padding
    keys = padding_mask_ref([3, 5])                                          # (2, 5)
    assert_rejects(lambda: from_padding(keys, padding_mask_ref([1, 2, 3])), "query_padding", "key_padding", "batch")
    assert_rejects(lambda: from_padding(keys.long()), "key_padding")
    assert_rejects(lambda: from_padding(keys.float()), "key_padding")
    assert_rejects(lambda: from_padding(keys[:, None, :]), "key_padding")
    assert_rejects(lambda: from_padding(keys[0]), "key_padding")
    assert_rejects(lambda: from_padding(keys, keys.int()), "query_padding")
    assert_rejects(lambda: from_padding([[True, False]]), "key_padding")


def test_combine_masks_bad_input(impl):
    combine = impl.masks.combine_masks
    causal = causal_mask_ref(3, 4)
    assert_rejects(lambda: combine(causal, causal.int()), "mask")
    assert_rejects(lambda: combine(causal.float(), causal), "mask")
    assert_rejects(lambda: combine(causal, torch.ones(3, 5, dtype=torch.bool)), "mask", "broadcast")
    assert_rejects(lambda: combine(torch.ones(2, 1, 3, 4, dtype=torch.bool),
                                   torch.ones(3, 1, 1, 4, dtype=torch.bool)), "mask", "broadcast")
    assert_rejects(lambda: combine(causal, [[True]]), "mask")


def test_mask_to_bias_bad_input(impl):
    to_bias = impl.masks.mask_to_bias
    mask = causal_mask_ref(3, 4)
    assert_rejects(lambda: to_bias(mask.int()), "mask")
    assert_rejects(lambda: to_bias(mask.float()), "mask")
    assert_rejects(lambda: to_bias(mask, dtype=torch.int32), "dtype")
    assert_rejects(lambda: to_bias(mask, dtype=torch.bool), "dtype")
    assert_rejects(lambda: to_bias(mask, dtype="float32"), "dtype")
    assert_rejects(lambda: to_bias([[True, False]]), "mask")


def test_large_non_power_of_two_masks(impl):
    # Sizes like a real prompt: still exact, and cheap (no Python loops over positions).
    got = impl.masks.causal_mask(1000, 1537)
    assert torch.equal(got, causal_mask_ref(1000, 1537)), BOTTOM_RIGHT
    lengths = torch.randint(0, 1537, (37,), generator=torch.Generator().manual_seed(83))
    lengths[0] = 1537
    assert torch.equal(impl.masks.padding_mask(lengths), padding_mask_ref(lengths))
    assert math.isinf(impl.masks.mask_to_bias(got)[0, -1].item()), "the last key is hidden from the first query"
