"""L07 basic suite: the sliding-window mask, blockwise sliding-window attention
(equal to masked full attention, never an Lq x Lk tensor, work and memory that
grow with W and not with L), the rolling KV cache (decoding several windows
long, token by token and in uneven chunks, in constant memory), and bad input.

Run: ./course test L07    (or: pytest testcases/L07_sliding_window -m basic)
Expected values come from coursekit.reference: sliding_window_mask_ref (built
from torch.arange) and sliding_window_attention_ref (float64 einsum attention
over the FULL (Lq, Lk) score matrix with that mask).
"""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from coursekit.reference import causal_mask_ref, sliding_window_attention_ref, sliding_window_mask_ref
from coursekit.testing import (LargestTensorRecorder, assert_close, assert_never_materialises, assert_no_nan,
                               assert_rejects, assert_same_mask, make_qkv, randn)

WINDOW_HINT = (
    "the window W counts the query's own key: position p sees keys j with 0 <= p - j < W, i.e. "
    "j in [p - W + 1, p] (W keys). `p - j <= W` gives W + 1 keys, `p - j < W - 1` gives W - 1")
ALIGNMENT_HINT = (
    "alignment is bottom-right: query i sits at absolute position p = i + Lk - Lq (the LAST Lq positions), "
    "as L03's causal_mask. Using p = i (top-left) is right only when Lq == Lk")
CAUSAL_HINT = "a sliding window is causal: keys after the query (p - j < 0) are never visible; the band is one-sided"


# -------------------------------------------------------------------- mask --

MASK_CASES = {
    # name: (q_len, k_len, window)
    "square_w3": (9, 9, 3),
    "square_w1_self_only": (6, 6, 1),
    "window_equals_length": (7, 7, 7),
    "window_longer_than_keys": (5, 5, 12),
    "decode_one_query": (1, 11, 4),
    "chunk_after_cache": (4, 10, 3),
    "more_queries_than_keys": (8, 5, 2),
    "non_power_of_two": (23, 37, 10),
}


@pytest.mark.parametrize("case", MASK_CASES, ids=list(MASK_CASES))
def test_mask_matches_the_reference(impl, case):
    q_len, k_len, window = MASK_CASES[case]
    got = impl.sliding_window.sliding_window_mask(q_len, k_len, window)
    hint = WINDOW_HINT + "; " + ALIGNMENT_HINT + ("; " + CAUSAL_HINT if q_len <= k_len else "")
    assert_same_mask(got, sliding_window_mask_ref(q_len, k_len, window), what=f"sliding_window_mask{MASK_CASES[case]}",
                     hint=hint)


def test_mask_is_a_band_of_two_triangles(impl):
    # A second, independent construction: causal (tril at the bottom-right
    # diagonal) minus everything W or more positions back.
    q_len, k_len, window = 12, 15, 5
    ones = torch.ones(q_len, k_len, dtype=torch.bool)
    band = ones.tril(k_len - q_len) & ~ones.tril(k_len - q_len - window)
    got = impl.sliding_window.sliding_window_mask(q_len, k_len, window)
    assert_same_mask(got, band, what="sliding_window_mask(12, 15, 5)", hint=WINDOW_HINT)
    visible = got.sum(dim=-1)
    expected = torch.clamp(torch.arange(q_len) + k_len - q_len + 1, max=window)
    assert torch.equal(visible, expected), (
        f"keys visible per query: {visible.tolist()}, expected min(p + 1, W) = {expected.tolist()}. " + WINDOW_HINT)


def test_mask_with_a_window_at_least_the_length_is_causal(impl):
    for q_len, k_len in ((6, 6), (3, 8), (8, 3)):
        for window in (k_len, k_len + 1, 1000):
            got = impl.sliding_window.sliding_window_mask(q_len, k_len, window)
            assert_same_mask(got, causal_mask_ref(q_len, k_len),
                             what=f"sliding_window_mask({q_len}, {k_len}, {window})",
                             hint="window >= k_len leaves nothing out: plain bottom-right causal attention")


# --------------------------------------------------------------- attention --

ATTENTION_CASES = {
    # name: (q_len, k_len, window, block_size)
    "window_1_attends_to_itself": (19, 19, 1, 8),
    "window_not_a_block_multiple": (45, 45, 13, 8),
    "window_below_block": (40, 40, 5, 16),
    "window_equals_length": (29, 29, 29, 8),
    "window_longer_than_sequence": (21, 21, 50, 8),
    "block_does_not_divide_length": (37, 37, 9, 10),
    "block_longer_than_sequence": (11, 11, 4, 64),
    "block_size_1": (13, 13, 5, 1),
    "decode_one_query": (1, 30, 7, 8),
    "chunk_after_cache": (6, 26, 9, 4),
    "more_queries_than_keys": (20, 9, 4, 8),
}


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=list(ATTENTION_CASES))
def test_attention_equals_masked_full_attention(impl, device, case):
    q_len, k_len, window, block = ATTENTION_CASES[case]
    q, k, v = make_qkv(2, 3, q_len, k_len, head_dim=8, v_dim=5, seed=list(ATTENTION_CASES).index(case),
                       device=device)
    out = impl.sliding_window.sliding_window_attention(q, k, v, window, block_size=block)
    assert out.shape == (2, 3, q_len, 5), (
        f"output shape {tuple(out.shape)}, expected (B, H, Lq, Dv) = (2, 3, {q_len}, 5)")
    assert_no_nan(out, hint="queries that see no key (Lq > Lk) give 0; guard the empty softmax row")
    hints = [WINDOW_HINT]
    if q_len != k_len:
        hints.append(ALIGNMENT_HINT)
    if q_len % block or k_len % block:
        hints.append(f"block_size={block} does not divide the lengths: the last, partial query block and key "
                     "block must be computed too")
    hints.append("each query block needs the keys [first - W + 1, last] of its positions: a band that starts "
                 "before its own block and ends at its last query")
    assert_close(out, sliding_window_attention_ref(q, k, v, window), hint="; ".join(hints))


def test_attention_uses_the_scale(impl):
    q, k, v = make_qkv(1, 2, 17, head_dim=6, seed=3)
    for scale in (None, 0.3):
        out = impl.sliding_window.sliding_window_attention(q, k, v, 5, scale=scale, block_size=4)
        assert_close(out, sliding_window_attention_ref(q, k, v, 5, scale=scale), what=f"output with scale={scale}",
                     hint="scores = q k^T * scale, scale defaulting to 1/sqrt(head_dim)")


def test_queries_that_see_no_key_give_zero(impl):
    # 7 queries, 3 keys: queries 0..3 sit at positions -4..-1 (before key 0).
    q, k, v = make_qkv(2, 2, 7, 3, head_dim=4, seed=4)
    out = impl.sliding_window.sliding_window_attention(q, k, v, 2, block_size=2)
    assert_no_nan(out, hint="a row with no visible key must give 0: set its max to 0 and its sum to 1 (or skip it)")
    assert_close(out[:, :, :4], torch.zeros(2, 2, 4, 4), what="output of the queries at negative positions",
                 hint=ALIGNMENT_HINT + "; a query before key 0 sees nothing and returns 0")
    assert_close(out, sliding_window_attention_ref(q, k, v, 2))


# ----------------------------------------------------- memory and work O(L·W) --

def test_never_builds_an_lq_by_lk_tensor(impl):
    B, H, L, D, W, block = 1, 2, 600, 4, 37, 32
    q, k, v = make_qkv(B, H, L, head_dim=D, seed=5)
    out = assert_never_materialises(
        lambda: impl.sliding_window.sliding_window_attention(q, k, v, W, block_size=block),
        B * H * L * L // 4, what=f"a quarter of the (B, H, Lq, Lk) = ({B}, {H}, {L}, {L}) score matrix",
        hint="do not build the full mask or the full score matrix and mask it: for each query block, slice out "
             "only the keys of its band (at most W + 2 * block_size of them) and score those")
    assert_close(out, sliding_window_attention_ref(q, k, v, W))


def largest_tensor(fn):
    with LargestTensorRecorder() as rec:
        fn()
    return rec.elements, rec.op


def test_peak_memory_depends_on_the_window_not_the_length(impl):
    # head_dim 1: the inputs and the output are only L elements, so the largest
    # tensor is the per-block score tile, which must not depend on L.
    block = 32
    for window in (40, 100):
        peaks = {}
        for length in (512, 2048):
            q, k, v = make_qkv(1, 1, length, head_dim=1, seed=6)
            peaks[length] = largest_tensor(
                lambda: impl.sliding_window.sliding_window_attention(q, k, v, window, block_size=block))
        (short, _), (long, op) = peaks[512], peaks[2048]
        assert long <= 1.25 * short, (
            f"W={window}: the largest tensor has {short} elements at L=512 and {long} (from {op}) at L=2048: memory "
            "grows with L. Each query block should score only the key blocks that intersect its band, never "
            "a whole row of Lk keys")
        bound = 2 * block * (window + 2 * block) + 4 * 2048
        assert long <= bound, (
            f"W={window}, block_size={block}: the largest tensor has {long} elements (from {op}); a query block's "
            f"band tile needs at most block_size * (W + 2 * block_size) = {block * (window + 2 * block)}")


def test_work_grows_linearly_with_the_length(impl):
    # Count the matmul FLOPs (q k^T and p v): a band of W keys per query makes
    # them O(L * W); quadrupling L must quadruple them, not multiply them by 16.
    B, H, D, W, block = 1, 2, 8, 32, 32
    flops = {}
    for length in (256, 1024):
        q, k, v = make_qkv(B, H, length, head_dim=D, seed=7)
        with FlopCounterMode(display=False) as counter:
            impl.sliding_window.sliding_window_attention(q, k, v, W, block_size=block)
        flops[length] = counter.get_total_flops()
    assert flops[256] > 0, "no matmul was counted: compute the scores with @ / matmul / einsum"
    ratio = flops[1024] / flops[256]
    full = 2 * 2 * B * H * 1024 * 1024 * D
    bound = 2 * 2 * B * H * 1024 * (W + 2 * block) * D
    assert ratio < 5 and flops[1024] <= bound, (
        f"matmul FLOPs: {flops[256]:.3g} at L=256, {flops[1024]:.3g} at L=1024 (x{ratio:.1f}; linear work gives "
        f"x4, the full score matrix x16 and {full:.3g}). Allowed at L=1024: {bound:.3g}, a band of "
        f"W + 2 * block_size = {W + 2 * block} keys per query. Score only the key blocks that intersect the band")


# ------------------------------------------------------------ rolling cache --

def expected_visible(full, start, n, window):
    """The past window - 1 positions before `start` (fewer at the beginning), then the n new ones."""
    return full[:, :, max(0, start - (window - 1)):start + n]


def tensor_bytes(cache):
    """Bytes of the distinct storages behind every tensor the cache object holds
    (attributes, lists and dicts of tensors). Two views of one buffer (k_cache
    and v_cache as halves of one allocation, say) are one buffer: counted once."""
    storages = {}
    for value in vars(cache).values():
        items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
        for t in items:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


@pytest.mark.parametrize("chunks", [[1] * 20, [3, 1, 6, 2, 1, 1, 5, 1], [9, 1, 1, 8, 1]],
                         ids=["token_by_token", "uneven_chunks", "chunks_longer_than_the_window"])
def test_update_returns_the_held_past_then_the_new_entries(impl, device, chunks):
    B, H, D, W = 2, 3, 4, 5
    total = sum(chunks)
    k_full = randn(B, H, total, D, seed=10, device=device)
    v_full = randn(B, H, total, D, seed=11, device=device)
    cache = impl.sliding_window.RollingKVCache(B, H, W, D, device=device)
    assert cache.seq_len == 0, f"a new cache has seen nothing: seq_len should be 0, got {cache.seq_len}"
    start = 0
    for step, n in enumerate(chunks):
        k_vis, v_vis = cache.update(k_full[:, :, start:start + n], v_full[:, :, start:start + n])
        held = min(start, W - 1)
        assert k_vis.shape == (B, H, held + n, D), (
            f"update {step} (positions {start}..{start + n - 1}, window {W}) returned {k_vis.shape[2]} entries, "
            f"expected held + n = {held} + {n}: the cache holds at most window - 1 = {W - 1} past entries (the new "
            "query's own key is the W-th), and returns them followed by the new ones. Keeping W past entries, or "
            "the whole history, returns too many")
        assert_close(k_vis, expected_visible(k_full, start, n, W), what=f"k_visible of update {step}", hint=(
            f"expected keys of positions {max(0, start - W + 1)}..{start + n - 1}: the {held} most recent past ones, "
            "OLDEST FIRST, then the new ones. A ring buffer must be read starting at the oldest slot, and must "
            "overwrite the oldest entries (keep the newest) when it is full"))
        assert_close(v_vis, expected_visible(v_full, start, n, W), what=f"v_visible of update {step}",
                     hint="the values follow the keys (k and v swapped?)")
        start += n
        assert cache.seq_len == start, (
            f"after {start} positions seq_len is {cache.seq_len}: seq_len counts every position seen since the start, "
            "not the number held")


@pytest.mark.parametrize("chunks", [[1] * 23, [4, 1, 9, 2, 1, 1, 3, 2]], ids=["token_by_token", "uneven_chunks"])
def test_decoding_through_the_cache_equals_the_full_computation(impl, device, chunks):
    # 23 positions, window 6: almost four windows long.
    B, H, D, W = 2, 3, 8, 6
    total = sum(chunks)
    q, k, v = make_qkv(B, H, total, head_dim=D, seed=12, device=device)
    expected = sliding_window_attention_ref(q, k, v, W)
    cache = impl.sliding_window.RollingKVCache(B, H, W, D, device=device)
    start = 0
    for n in chunks:
        k_vis, v_vis = cache.update(k[:, :, start:start + n], v[:, :, start:start + n])
        out = impl.sliding_window.sliding_window_attention(q[:, :, start:start + n], k_vis, v_vis, W, block_size=4)
        assert_close(out, expected[:, :, start:start + n], what=f"decoded positions {start}..{start + n - 1}", hint=(
            "the new queries attend to k_visible with bottom-right alignment (the queries are the LAST n of the "
            f"{k_vis.shape[2]} visible keys) and the same window. " + ALIGNMENT_HINT))
        start += n


def test_window_1_cache_holds_nothing(impl):
    cache = impl.sliding_window.RollingKVCache(1, 2, 1, 4)
    for step in range(3):
        k, v = randn(1, 2, 2, 4, seed=20 + step), randn(1, 2, 2, 4, seed=30 + step)
        k_vis, v_vis = cache.update(k, v)
        assert_close(k_vis, k, what=f"k_visible of update {step} with window 1",
                     hint="window 1: every token sees only itself, so the cache holds no past entry")
        assert_close(v_vis, v, what=f"v_visible of update {step} with window 1")
    assert cache.seq_len == 6, f"seq_len counts every position seen: expected 6, got {cache.seq_len}"


def test_cache_memory_does_not_grow_with_the_sequence(impl):
    B, H, D, W = 2, 3, 4, 8
    cache = impl.sliding_window.RollingKVCache(B, H, W, D)
    before = tensor_bytes(cache)
    limit = 2 * B * H * W * D * 4  # K and V, (B, H, W, D) float32: a little more than the W - 1 needed
    assert 0 < before <= limit, (
        f"a RollingKVCache(B={B}, H={H}, window={W}, D={D}) holds {before} bytes of tensors; its two ring buffers "
        f"(B, H, window - 1, D) need {2 * B * H * (W - 1) * D * 4}. Allocate them once, in __init__")
    for step in range(40):
        n = 1 + step % 3
        k_vis, _ = cache.update(randn(B, H, n, D, seed=step), randn(B, H, n, D, seed=100 + step))
        assert k_vis.shape[2] <= W - 1 + n, (
            f"update {step} returned {k_vis.shape[2]} entries for {n} new ones: at most window - 1 + n = {W - 1 + n}")
        now = tensor_bytes(cache)
        assert now == before, (
            f"after {cache.seq_len} positions the cache holds {now} bytes of tensors, {before} at the start: its "
            "memory must not depend on the sequence length. Keep a ring of window - 1 entries and overwrite the "
            "oldest; do not keep (or torch.cat onto) the history")


# --------------------------------------------------------------- bad input --

def test_bad_window_is_rejected(impl):
    sw = impl.sliding_window
    q, k, v = make_qkv(1, 1, 4, head_dim=2, seed=40)
    for bad in (0, -3):
        assert_rejects(lambda: sw.sliding_window_mask(4, 4, bad), "window")
        assert_rejects(lambda: sw.sliding_window_attention(q, k, v, bad), "window")
        assert_rejects(lambda: sw.RollingKVCache(1, 1, bad, 2), "window")
    for bad in (2.5, True, None):
        assert_rejects(lambda: sw.sliding_window_mask(4, 4, bad), "window")
        assert_rejects(lambda: sw.sliding_window_attention(q, k, v, bad), "window")


def test_bad_attention_input_is_rejected(impl):
    attention = impl.sliding_window.sliding_window_attention
    q, k, v = make_qkv(2, 3, 5, head_dim=4, seed=41)
    assert_rejects(lambda: attention(q[0], k[0], v[0], 3), "q")
    assert_rejects(lambda: attention(q, k[..., :3], v, 3), "head_dim", "k")
    assert_rejects(lambda: attention(q, k, v[:, :, :4], 3), "v")
    assert_rejects(lambda: attention(q, k.double(), v, 3), "k", "dtype")
    assert_rejects(lambda: attention(q.long(), k.long(), v.long(), 3), "q")
    assert_rejects(lambda: attention(q, k[:1], v[:1], 3), "q", "k")
    assert_rejects(lambda: attention(q, k, v, 3, block_size=0), "block_size")
    assert_rejects(lambda: attention(q, k, v, 3, scale=float("nan")), "scale")


def test_mismatched_cache_updates_are_rejected_and_change_nothing(impl):
    cache = impl.sliding_window.RollingKVCache(2, 3, 4, 5)
    k, v = randn(2, 3, 2, 5, seed=42), randn(2, 3, 2, 5, seed=43)
    cache.update(k, v)
    bad = {
        "batch": (randn(1, 3, 1, 5), randn(1, 3, 1, 5), ("k", "batch")),
        "heads": (randn(2, 2, 1, 5), randn(2, 2, 1, 5), ("k", "heads")),
        "head_dim": (randn(2, 3, 1, 4), randn(2, 3, 1, 4), ("k", "head_dim")),
        "k_v_shapes": (randn(2, 3, 1, 5), randn(2, 3, 2, 5), ("v", "k")),
        "rank": (randn(3, 1, 5), randn(3, 1, 5), ("k",)),
        "dtype": (randn(2, 3, 1, 5, dtype=torch.float64), randn(2, 3, 1, 5, dtype=torch.float64), ("k", "dtype")),
        "not_a_tensor": ([[0.0]], randn(2, 3, 1, 5), ("k",)),
    }
    for case, (k_bad, v_bad, names) in bad.items():
        assert_rejects(lambda: cache.update(k_bad, v_bad), *names)
        assert cache.seq_len == 2, f"case {case}: a rejected update changed seq_len to {cache.seq_len}"
    k_new, v_new = randn(2, 3, 1, 5, seed=44), randn(2, 3, 1, 5, seed=45)
    k_vis, v_vis = cache.update(k_new, v_new)
    assert_close(k_vis, torch.cat([k, k_new], dim=2), what="k_visible after the rejected updates",
                 hint="check everything before writing anything into the ring")
    assert_close(v_vis, torch.cat([v, v_new], dim=2), what="v_visible after the rejected updates",
                 hint="check everything (k AND v) before writing anything into the ring")
