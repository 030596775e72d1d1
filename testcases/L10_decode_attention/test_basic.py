"""L10 basic suite: merging partial attentions by their lse, split-KV attention
(every split count, MHA / GQA / MQA, ragged kv_lens, a few queries bottom-right
causal), and the Triton split-KV kernel under the interpreter (or on CUDA).

Run: ./course test L10    (or: pytest testcases/L10_decode_attention -m basic)
Expected values come from coursekit.reference.decode_attention_ref:
F.scaled_dot_product_attention (enable_gqa) with an explicit boolean mask, in
float64, and torch.logsumexp of the visible scores.
"""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coursekit.reference import decode_attention_ref
from coursekit.testing import assert_close, assert_no_nan, assert_rejects, assert_within_eager_error, randn

MERGE_HINT = ("the merged lse is log(exp(lse_a) + exp(lse_b)); each part's out is weighted by its share of the "
              "softmax mass, exp(lse_x - lse), so the weights sum to 1. Adding or averaging the outs, or forgetting "
              "to divide by the sum of the weights, is wrong whenever the parts' lse differ")
EMPTY_HINT = ("an empty part (no visible key) has lse -inf and must contribute nothing: guard the max (m = 0 when "
              "it is -inf, so exp(-inf - m) = 0 instead of exp(-inf + inf) = NaN), and never multiply its out by 0 "
              "(0 * NaN = NaN); select it away")
SPLIT_HINT = ("the keys are cut into num_splits chunks of ceil(T / num_splits) keys (split_bounds): the last chunk "
              "may be shorter and trailing chunks may be empty; every key must be in exactly one chunk")
LENS_HINT = ("kv_lens[b] is row b's number of valid keys: keys j >= kv_lens[b] do not exist and must be masked in "
             "every chunk (a row of length 0 gives out 0 and lse -inf)")
CAUSAL_HINT = ("with Lq > 1 query i sits at position kv_lens[b] - Lq + i (the LAST Lq positions of ITS row, not of "
               "the padded T) and sees keys j <= that position: bottom-right causal")
GQA_HINT = ("GQA: query head h reads KV head h // (H // Hkv) (repeat_interleave, interleaved), not h % Hkv "
            "(.repeat, tiled)")


def decode_inputs(batch, heads, kv_heads, q_len, seq_len, *, head_dim=8, v_dim=None, seed=0, dtype=torch.float32,
                  device="cpu"):
    """q (B, H, Lq, D), k (B, Hkv, T, D), v (B, Hkv, T, Dv) from one seed; each KV head gets its own values."""
    q = randn(batch, heads, q_len, head_dim, seed=seed, dtype=dtype, device=device)
    k = randn(batch, kv_heads, seq_len, head_dim, seed=seed + 1, dtype=dtype, device=device)
    v = randn(batch, kv_heads, seq_len, v_dim or head_dim, seed=seed + 2, dtype=dtype, device=device)
    return q, k, v


def partial_ref(q, k, v, lo, hi):
    """Attention over keys lo..hi-1 only (float64 (out, lse)); an empty range: out 0, lse -inf."""
    B = q.shape[0]
    if hi <= lo:
        return q.new_zeros(*q.shape[:-1], v.shape[-1], dtype=torch.float64), \
            torch.full(q.shape[:-1], -math.inf, dtype=torch.float64)
    return decode_attention_ref(q, k[:, :, lo:hi], v[:, :, lo:hi], torch.full((B,), hi - lo), scale=q.shape[-1] ** -0.5)


# ------------------------------------------------------------- merge_partials --

@pytest.mark.parametrize("cut", [1, 5, 9, 16], ids=lambda c: f"cut_at_{c}")
def test_merging_two_parts_equals_attention_over_both(impl, cut):
    # Lq = 1 queries against 17 keys, cut into [0, cut) and [cut, 17): the merge must give attention over all 17.
    q, k, v = decode_inputs(2, 3, 3, 1, 17, seed=1)
    out_a, lse_a = partial_ref(q, k, v, 0, cut)
    out_b, lse_b = partial_ref(q, k, v, cut, 17)
    out, lse = impl.decode_attention.merge_partials(out_a.float(), lse_a.float(), out_b.float(), lse_b.float())
    want_out, want_lse = decode_attention_ref(q, k, v)
    assert_close(lse, want_lse, dtype=torch.float32, what="merged lse", hint=MERGE_HINT)
    assert_close(out, want_out, dtype=torch.float32, what="merged out", hint=MERGE_HINT)


def test_merge_weights_parts_by_their_share_of_the_mass(impl):
    # Part a holds almost all the mass (lse 8 vs 0): the merged out must be ~out_a, not the average.
    out_a = torch.full((1, 1, 2, 3), 1.0)
    out_b = torch.full((1, 1, 2, 3), -1.0)
    lse_a = torch.tensor([[[8.0, 0.0]]])
    lse_b = torch.tensor([[[0.0, 0.0]]])
    out, lse = impl.decode_attention.merge_partials(out_a, lse_a, out_b, lse_b)
    w = 1.0 / (1.0 + math.exp(-8.0))
    expected = torch.tensor([2 * w - 1, 0.0])[None, None, :, None].expand(1, 1, 2, 3)
    assert_close(out, expected, what="merged out of parts with lse 8 and 0", hint=MERGE_HINT)
    assert_close(lse, torch.tensor([[[8.0 + math.log1p(math.exp(-8.0)), math.log(2.0)]]]), what="merged lse",
                 hint=MERGE_HINT)


def test_empty_parts_contribute_nothing_and_never_nan(impl):
    merge = impl.decode_attention.merge_partials
    out_a = randn(2, 3, 4, 5, seed=2)
    lse_a = randn(2, 3, 4, seed=3)
    garbage = torch.full((2, 3, 4, 5), float("nan"))  # an empty part's out is undefined: it must not matter
    empty = torch.full((2, 3, 4), -math.inf)
    for order in ("empty_second", "empty_first"):
        args = (out_a, lse_a, garbage, empty) if order == "empty_second" else (garbage, empty, out_a, lse_a)
        out, lse = merge(*args)
        assert_no_nan(out, what=f"merged out ({order})", hint=EMPTY_HINT)
        assert_close(out, out_a, what=f"merged out ({order})", hint=EMPTY_HINT)
        assert_close(lse, lse_a, what=f"merged lse ({order})", hint=EMPTY_HINT)
    out, lse = merge(garbage, empty, garbage.clone(), empty.clone())
    assert_no_nan(out, what="merged out of two empty parts", hint=EMPTY_HINT)
    assert_close(out, torch.zeros(2, 3, 4, 5), what="merged out of two empty parts",
                 hint="both parts empty: the row sees no key, out 0. " + EMPTY_HINT)
    assert torch.isneginf(lse).all(), f"two empty parts merge to lse -inf, got {lse.flatten()[:4].tolist()}"


def test_merge_statistics_in_float32_for_half_inputs(impl):
    # Half-precision partial outs: the weights and the sum are float32, the out comes back in the input dtype.
    out_a, out_b = randn(2, 2, 3, 8, seed=4, dtype=torch.float16), randn(2, 2, 3, 8, seed=5, dtype=torch.float16)
    lse_a, lse_b = randn(2, 2, 3, seed=6) * 3, randn(2, 2, 3, seed=7) * 3
    out, lse = impl.decode_attention.merge_partials(out_a, lse_a, out_b, lse_b)
    assert out.dtype == torch.float16, f"out must keep out_a's dtype float16, got {out.dtype}"
    assert lse.dtype == torch.float32, f"lse is float32 for half inputs, got {lse.dtype}"
    la, lb = lse_a.double(), lse_b.double()
    want_lse = torch.logaddexp(la, lb)
    want = (torch.exp(la - want_lse)[..., None] * out_a.double() + torch.exp(lb - want_lse)[..., None] * out_b.double())
    assert_close(out, want, what="merged float16 out", hint="weights and the weighted sum belong in float32")
    assert_close(lse, want_lse, dtype=torch.float32, what="merged lse")


FINITE_OR_EMPTY = st.one_of(st.floats(-30, 30), st.just(-math.inf))


def merge_case(draw_lse):
    """Three parts of shape (1, 2, 2, 3) from a seed, with lse values drawn (some -inf)."""
    seed, lses = draw_lse
    outs = [randn(1, 2, 2, 3, seed=seed + i) for i in range(3)]
    lse = [torch.tensor(lses[4 * i:4 * i + 4], dtype=torch.float32).view(1, 2, 2) for i in range(3)]
    return outs, lse


@settings(max_examples=40, deadline=None)
@given(st.tuples(st.integers(0, 10_000), st.lists(FINITE_OR_EMPTY, min_size=12, max_size=12)))
def test_merge_is_commutative(impl, case):
    merge = impl.decode_attention.merge_partials
    (o1, o2, _), (l1, l2, _) = merge_case(case)
    ab, ba = merge(o1, l1, o2, l2), merge(o2, l2, o1, l1)
    for name, x, y in (("out", ab[0], ba[0]), ("lse", ab[1], ba[1])):
        assert_no_nan(x, what=f"merged {name}", hint=EMPTY_HINT)
        assert_close(x, y, what=f"merge(a, b) {name} vs merge(b, a)",
                     hint="the merge must not depend on the order of its parts: " + MERGE_HINT)


@settings(max_examples=40, deadline=None)
@given(st.tuples(st.integers(0, 10_000), st.lists(FINITE_OR_EMPTY, min_size=12, max_size=12)))
def test_merge_is_associative(impl, case):
    merge = impl.decode_attention.merge_partials
    (o1, o2, o3), (l1, l2, l3) = merge_case(case)
    left = merge(*merge(o1, l1, o2, l2), o3, l3)
    right = merge(o1, l1, *merge(o2, l2, o3, l3))
    assert_no_nan(left[0], what="merge(merge(a, b), c) out", hint=EMPTY_HINT)
    assert_close(left[1], right[1], what="lse of merge(merge(a, b), c) vs merge(a, merge(b, c))", hint=MERGE_HINT)
    assert_close(left[0], right[0], what="out of merge(merge(a, b), c) vs merge(a, merge(b, c))",
                 hint="splits may be merged in any grouping (a tree on the GPU): " + MERGE_HINT)


# --------------------------------------------------------- split_kv_attention --

HEADS = {"mha": (4, 4), "gqa": (6, 2), "mqa": (4, 1)}
SPLITS = [1, 2, 3, 6, 13, 20]  # T = 13: 6 splits of 3 leave 5 chunks and one empty; 20 > T leaves 7 empty


@pytest.mark.parametrize("num_splits", SPLITS, ids=lambda s: f"splits{s}")
@pytest.mark.parametrize("heads", HEADS, ids=list(HEADS))
def test_split_kv_matches_sdpa(impl, device, heads, num_splits):
    H, Hkv = HEADS[heads]
    q, k, v = decode_inputs(2, H, Hkv, 1, 13, v_dim=5, seed=10, device=device)
    out, lse = impl.decode_attention.split_kv_attention(q, k, v, num_splits)
    want_out, want_lse = decode_attention_ref(q, k, v)
    assert out.shape == (2, H, 1, 5), f"out has shape {tuple(out.shape)}, expected (B, H, Lq, Dv) = (2, {H}, 1, 5)"
    assert_no_nan(out, hint=EMPTY_HINT)
    hint = "; ".join([SPLIT_HINT, GQA_HINT if H != Hkv else MERGE_HINT])
    assert_close(out, want_out, what=f"out ({heads}, num_splits={num_splits})", hint=hint)
    assert_close(lse, want_lse, what=f"lse ({heads}, num_splits={num_splits})", hint=hint)


def test_every_split_count_gives_the_same_answer(impl):
    q, k, v = decode_inputs(1, 2, 1, 1, 11, seed=11)
    want_out, want_lse = decode_attention_ref(q, k, v)
    for num_splits in range(1, 16):
        out, lse = impl.decode_attention.split_kv_attention(q, k, v, num_splits)
        assert_close(out, want_out, what=f"out with num_splits={num_splits} (T=11)", hint=SPLIT_HINT)
        assert_close(lse, want_lse, what=f"lse with num_splits={num_splits} (T=11)", hint=SPLIT_HINT)


@pytest.mark.parametrize("q_len", [1, 2, 4, 8])
@pytest.mark.parametrize("heads", HEADS, ids=list(HEADS))
def test_ragged_kv_lens(impl, device, heads, q_len):
    # Rows of length 0, 1, a partial chunk, fewer keys than queries, and the whole cache.
    H, Hkv = HEADS[heads]
    kv_lens = torch.tensor([0, 1, 7, 3, 19], device=device)
    q, k, v = decode_inputs(5, H, Hkv, q_len, 19, seed=12, device=device)
    out, lse = impl.decode_attention.split_kv_attention(q, k, v, 4, kv_lens=kv_lens)
    want_out, want_lse = decode_attention_ref(q, k, v, kv_lens.cpu())
    assert_no_nan(out, hint="a row of length 0 (or a query before its row's first key) gives out 0. " + EMPTY_HINT)
    hint = "; ".join([LENS_HINT] + ([CAUSAL_HINT] if q_len > 1 else []) + ([GQA_HINT] if H != Hkv else []))
    for b in range(5):
        assert_close(out[b], want_out[b], what=f"out of row {b} (kv_len {int(kv_lens[b])}, Lq={q_len})", hint=hint)
        assert_close(lse[b], want_lse[b], what=f"lse of row {b} (kv_len {int(kv_lens[b])}, Lq={q_len})", hint=hint)


@pytest.mark.parametrize("q_len", [2, 3, 5, 8])
def test_several_queries_are_bottom_right_causal(impl, q_len):
    # kv_lens None: the Lq queries are positions T - Lq .. T - 1; query i sees keys 0 .. T - Lq + i.
    q, k, v = decode_inputs(2, 4, 2, q_len, 12, seed=13)
    out, lse = impl.decode_attention.split_kv_attention(q, k, v, 3)
    want_out, want_lse = decode_attention_ref(q, k, v)
    assert_close(lse, want_lse, what=f"lse with Lq={q_len}", hint=CAUSAL_HINT)
    assert_close(out, want_out, what=f"out with Lq={q_len}", hint=CAUSAL_HINT)


def test_uses_the_scale(impl):
    q, k, v = decode_inputs(2, 2, 1, 1, 9, seed=14)
    for scale in (None, 0.7):
        out, lse = impl.decode_attention.split_kv_attention(q, k, v, 2, scale=scale)
        want_out, want_lse = decode_attention_ref(q, k, v, scale=scale)
        assert_close(out, want_out, what=f"out with scale={scale}", hint="scores = q k^T * scale, 1/sqrt(D) by default")
        assert_close(lse, want_lse, what=f"lse with scale={scale}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_within_eager_error(impl, dtype):
    q, k, v = decode_inputs(2, 4, 2, 2, 40, head_dim=16, seed=15, dtype=dtype)
    kv_lens = torch.tensor([40, 23])
    out, lse = impl.decode_attention.split_kv_attention(q, k, v, 3, kv_lens=kv_lens)
    assert out.dtype == dtype, f"out must keep the input dtype {dtype}, got {out.dtype}"
    assert lse.dtype == torch.float32, f"lse is float32 for half inputs, got {lse.dtype}"
    want_out, want_lse = decode_attention_ref(q, k, v, kv_lens)
    assert_within_eager_error(out, want_out, eager_decode(q, k, v, kv_lens), what=f"{dtype} out",
                              hint="scores, softmax and the merge belong in float32 for half inputs")
    assert_close(lse, want_lse, dtype=dtype, what=f"lse of {dtype} inputs")


def eager_decode(q, k, v, kv_lens):
    """Plain PyTorch in q's dtype (scores, softmax and output rounded to it): the
    yardstick of coursekit.testing.EAGER_FACTOR."""
    from coursekit.reference import decode_visible_ref
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, Lq, D) @ (B, H, D, T) -> (B, H, Lq, T)
    visible = decode_visible_ref(kv_lens, q.shape[2], k.shape[2], device=q.device)[:, None]
    p = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1).nan_to_num(0.0)
    return p @ v


def test_bad_input_is_rejected(impl):
    da = impl.decode_attention
    q, k, v = decode_inputs(2, 4, 2, 1, 6, seed=16)
    out, _ = da.split_kv_attention(q, k, v, 2)  # a valid call first: the checks guard a working function
    assert_close(out, decode_attention_ref(q, k, v)[0], what="out of the valid call")
    assert_rejects(lambda: da.split_kv_attention(q[0], k[0], v[0], 2), "q")
    assert_rejects(lambda: da.split_kv_attention(randn(2, 3, 1, 8), k, v, 2), "heads", "q")
    assert_rejects(lambda: da.split_kv_attention(q, k[..., :4], v, 2), "head_dim", "k")
    assert_rejects(lambda: da.split_kv_attention(q, k, v[:, :, :5], 2), "v")
    assert_rejects(lambda: da.split_kv_attention(q, k[:1], v[:1], 2), "batch", "k")
    assert_rejects(lambda: da.split_kv_attention(q, k.double(), v, 2), "dtype", "k")
    for bad in (0, -1):
        assert_rejects(lambda: da.split_kv_attention(q, k, v, bad), "num_splits")
    for bad in (2.0, None, True):
        assert_rejects(lambda: da.split_kv_attention(q, k, v, bad), "num_splits")
    assert_rejects(lambda: da.split_kv_attention(q, k, v, 2, kv_lens=torch.tensor([3, 7])), "kv_lens")
    assert_rejects(lambda: da.split_kv_attention(q, k, v, 2, kv_lens=torch.tensor([-1, 2])), "kv_lens")
    assert_rejects(lambda: da.split_kv_attention(q, k, v, 2, kv_lens=torch.tensor([3])), "kv_lens")
    assert_rejects(lambda: da.split_kv_attention(q, k, v, 2, kv_lens=torch.tensor([3.0, 2.0])), "kv_lens")
    assert_rejects(lambda: da.split_kv_attention(q, k, v, 2, scale=float("inf")), "scale")
    o, l = da.merge_partials(out, torch.zeros(2, 4, 1), out, torch.zeros(2, 4, 1))
    assert_close(o, out, what="merge of a part with itself (equal lse)", hint=MERGE_HINT)
    assert_rejects(lambda: da.merge_partials(out, torch.zeros(2, 4, 1), out[:1], torch.zeros(1, 4, 1)), "out_a", "out_b")
    assert_rejects(lambda: da.merge_partials(out, torch.zeros(2, 4), out, torch.zeros(2, 4)), "lse_a", "lse")
    assert_rejects(lambda: da.merge_partials(out, [0.0], out, torch.zeros(2, 4, 1)), "lse_a")


# ===========================================================================
# Part 2: the Triton kernel (decode_attention_triton). On a CUDA machine it runs
# on the GPU; without one, on CPU tensors under TRITON_INTERPRET=1 (the plugin
# sets it), where every program runs in Python: shapes stay small.
# ===========================================================================
TRITON_CASES = {
    # name: (H, Hkv, Lq, kv_lens, num_splits); T = 37 (not a multiple of the 16-key interpreter tile)
    "mha_default_splits": (4, 4, 1, None, None),
    "gqa_ragged_3_splits": (4, 2, 1, [0, 1, 37], 3),
    "mqa_ragged_one_split": (4, 1, 1, [37, 20, 1], 1),
    "gqa_empty_splits": (4, 2, 1, [30, 5, 37], 7),
    "gqa_lq3_causal": (4, 2, 3, [37, 2, 17], 2),
    "mqa_lq8_causal": (2, 1, 8, None, 2),
}


@pytest.mark.triton
@pytest.mark.parametrize("case", TRITON_CASES, ids=list(TRITON_CASES))
def test_triton_matches_sdpa(impl, triton_device, case):
    H, Hkv, q_len, lens, num_splits = TRITON_CASES[case]
    q, k, v = decode_inputs(3, H, Hkv, q_len, 37, head_dim=16, seed=20, device=triton_device)
    kv_lens = None if lens is None else torch.tensor(lens, device=triton_device)
    out, lse = impl.decode_attention_triton.triton_decode_attention(q, k, v, kv_lens=kv_lens, num_splits=num_splits)
    want_out, want_lse = decode_attention_ref(q, k, v, None if lens is None else torch.tensor(lens))
    hints = [SPLIT_HINT]
    if lens is not None:
        hints.append(LENS_HINT)
    if q_len > 1:
        hints.append(CAUSAL_HINT)
    if H != Hkv:
        hints.append("the G = H // Hkv query heads packed into a tile's rows are heads hkv*G .. hkv*G + G - 1 "
                     "(row r = g * Lq + i): " + GQA_HINT)
    assert_no_nan(out, what=f"triton out ({case})", hint=EMPTY_HINT)
    assert_close(out, want_out, what=f"triton out ({case})", hint="; ".join(hints))
    assert_close(lse, want_lse, what=f"triton lse ({case})", hint="lse is the natural log; " + "; ".join(hints))


@pytest.mark.triton
def test_triton_half_precision_within_eager_error(impl, triton_device):
    q, k, v = decode_inputs(2, 4, 2, 1, 40, head_dim=16, seed=21, dtype=torch.float16, device=triton_device)
    kv_lens = torch.tensor([40, 23], device=triton_device)
    out, lse = impl.decode_attention_triton.triton_decode_attention(q, k, v, kv_lens=kv_lens, num_splits=3)
    assert out.dtype == torch.float16, f"out must keep the input dtype float16, got {out.dtype}"
    assert lse.dtype == torch.float32, f"lse is float32, got {lse.dtype}"
    want_out, _ = decode_attention_ref(q, k, v, kv_lens.cpu())
    assert_within_eager_error(out, want_out, eager_decode(q, k, v, kv_lens), what="triton float16 out",
                              hint="scores, the running statistics, the partials and the merge belong in float32")


@pytest.mark.triton
def test_triton_bad_input_is_rejected(impl, triton_device):
    dt = impl.decode_attention_triton
    q, k, v = decode_inputs(2, 4, 2, 1, 9, head_dim=16, seed=22, device=triton_device)
    out, _ = dt.triton_decode_attention(q, k, v, num_splits=2)  # a valid call first
    assert_close(out, decode_attention_ref(q, k, v)[0], what="triton out of the valid call")
    assert_rejects(lambda: dt.triton_decode_attention(q[0], k[0], v[0]), "q")
    assert_rejects(lambda: dt.triton_decode_attention(randn(2, 3, 1, 16, device=triton_device), k, v), "heads")
    assert_rejects(lambda: dt.triton_decode_attention(q, k, v[..., :8]), "v")
    assert_rejects(lambda: dt.triton_decode_attention(q.double(), k.double(), v.double()), "float64", "dtype")
    assert_rejects(lambda: dt.triton_decode_attention(q, k, v, num_splits=0), "num_splits")
    assert_rejects(lambda: dt.triton_decode_attention(q, k, v, kv_lens=torch.tensor([10, 2], device=triton_device)),
                   "kv_lens")
    assert_rejects(lambda: dt.triton_decode_attention(q, k, v, kv_lens=torch.tensor([1.0, 2.0], device=triton_device)),
                   "kv_lens")
