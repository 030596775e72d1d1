"""L05 advanced suite, both parts of the lesson.

Part 1 (L05.1, flash_attention.py): random shapes, blocks and causality
(Hypothesis) for the forward and the backward, invariance to the block sizes,
extreme logits that would overflow a softmax without its max, the work that
causal block skipping saves (counted in matrix-multiply FLOPs with torch's
FlopCounterMode, forward and backward), half-precision gradients, odd layouts
(non-contiguous inputs, a value width of its own), zero sizes, and bad input.

Part 2 (L05.2, flash_attention_triton.py, the `triton` tests at the end): the
stretch exercise, the backward kernels (against autograd through a float64
reference, fully masked rows, float16 gradients), zero sizes, and the kernels'
own rules (Dv == D, bool flags).

Run: ./course test L05.1 --advanced, ./course test L05.2 --advanced
"""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from coursekit.reference import attention_lse_ref, causal_mask_ref
from coursekit.testing import (assert_close, assert_no_nan, assert_rejects, assert_within_eager_error, make_qkv,
                               randn)

# ----------------------------------------------------------------- helpers --

CAUSAL = [pytest.param(False, id="full"), pytest.param(True, id="causal")]
BACKWARD_HINT = (
    "recompute P = exp(S - lse) block by block, D_i = rowsum(dO * O); dV += P^T dO, dP = dO V^T, "
    "dS = P * (dP - D_i) * scale, dQ += dS K, dK += dS^T Q")


def reference_grads(q, k, v, grad_out, causal=False, scale=None):
    """(dq, dk, dv) in float64: autograd through coursekit.reference.attention_lse_ref."""
    leaves = [t.detach().to(torch.float64).requires_grad_() for t in (q, k, v)]
    out, _ = attention_lse_ref(*leaves, causal=causal, scale=scale)
    return torch.autograd.grad(out, leaves, grad_out.to(torch.float64))


def matmul_flops(fn):
    """Run fn() and return the FLOPs of its matrix multiplies (2 per multiply-add),
    as counted by torch.utils.flop_counter.FlopCounterMode: what the code did,
    observed from outside, whatever its loops look like."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def visible_tiles(lq, lk, block_q, block_k, causal):
    """[(rows, keys)] of every (query block, key block) tile that holds at least
    one visible (query, key) pair, read off the bottom-right causal mask: the
    tiles a block-skipping implementation must compute, and no others."""
    mask = causal_mask_ref(lq, lk) if causal else torch.ones(lq, lk, dtype=torch.bool)
    tiles = []
    for q0 in range(0, lq, block_q):
        for k0 in range(0, lk, block_k):
            tile = mask[q0:q0 + block_q, k0:k0 + block_k]
            if tile.any():
                tiles.append(tuple(tile.shape))
    return tiles


# ------------------------------------------------------------- properties --

@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(batch=st.integers(1, 2), heads=st.integers(1, 3), lq=st.integers(1, 40), lk=st.integers(1, 40),
       head_dim=st.sampled_from([1, 3, 8, 13]), block_q=st.integers(1, 48), block_k=st.integers(1, 48),
       causal=st.booleans(), seed=st.integers(0, 2**16))
def test_random_shapes_and_blocks_match_reference(impl, batch, heads, lq, lk, head_dim, block_q, block_k, causal,
                                                   seed):
    q, k, v = make_qkv(batch, heads, lq, lk, head_dim, seed=seed, dtype=torch.float64)
    out, lse = impl.flash_attention.flash_attention_forward(q, k, v, causal=causal, block_q=block_q, block_k=block_k)
    expected_out, expected_lse = attention_lse_ref(q, k, v, causal=causal)
    case = (f"B={batch}, H={heads}, Lq={lq}, Lk={lk}, D={head_dim}, block_q={block_q}, block_k={block_k}, "
            f"causal={causal}")
    assert_close(out, expected_out, what=f"out ({case})", hint="bottom-right causal; partial last blocks included")
    assert_close(lse, expected_lse, dtype=torch.float64, what=f"lse ({case})", hint="lse = m_i + log(l_i)")


@settings(max_examples=20, deadline=None, derandomize=True, database=None)
@given(lq=st.integers(1, 24), lk=st.integers(1, 24), block_q=st.integers(1, 30), block_k=st.integers(1, 30),
       causal=st.booleans(), seed=st.integers(0, 2**16))
def test_random_backward_matches_reference(impl, lq, lk, block_q, block_k, causal, seed):
    fa = impl.flash_attention
    q, k, v = make_qkv(1, 2, lq, lk, 5, seed=seed, dtype=torch.float64)
    grad_out = randn(1, 2, lq, 5, seed=seed + 3, dtype=torch.float64)
    out, lse = fa.flash_attention_forward(q, k, v, causal=causal, block_q=block_q, block_k=block_k)
    grads = fa.flash_attention_backward(q, k, v, out, lse, grad_out, causal=causal, block_q=block_q, block_k=block_k)
    case = f"Lq={lq}, Lk={lk}, block_q={block_q}, block_k={block_k}, causal={causal}"
    for name, got, want in zip(("dq", "dk", "dv"), grads, reference_grads(q, k, v, grad_out, causal)):
        assert_close(got, want, what=f"{name} ({case})", hint=BACKWARD_HINT)


@pytest.mark.parametrize("causal", CAUSAL)
def test_result_does_not_depend_on_the_block_sizes(impl, causal):
    q, k, v = make_qkv(2, 2, 57, 70, 16, seed=20)
    fa = impl.flash_attention
    out_ref, lse_ref = fa.flash_attention_forward(q, k, v, causal=causal, block_q=57, block_k=70)  # one tile
    for block_q, block_k in [(1, 1), (1, 70), (57, 1), (8, 8), (13, 29), (64, 64), (100, 7)]:
        out, lse = fa.flash_attention_forward(q, k, v, causal=causal, block_q=block_q, block_k=block_k)
        assert_close(out, out_ref, what=f"out with blocks ({block_q}, {block_k}) vs one tile",
                     hint="tiling changes only the order of the sums, never the result")
        assert_close(lse, lse_ref, what=f"lse with blocks ({block_q}, {block_k}) vs one tile")


def test_default_block_sizes(impl):
    q, k, v = make_qkv(1, 2, 150, 131, 16, seed=21)
    for causal in (False, True):
        out, lse = impl.flash_attention.flash_attention_forward(q, k, v, causal=causal)
        expected_out, expected_lse = attention_lse_ref(q, k, v, causal=causal)
        assert_close(out, expected_out, what=f"out with the default 64 x 64 blocks (causal={causal})")
        assert_close(lse, expected_lse, what=f"lse with the default blocks (causal={causal})")


# ---------------------------------------------------------- extreme logits --

@pytest.mark.parametrize("causal", CAUSAL)
def test_huge_logits_float64(impl, causal):
    # scale = 300: scores reach several thousand, far past exp's float64 limit of 709.
    q, k, v = make_qkv(2, 2, 23, 31, 8, seed=22, dtype=torch.float64)
    out, lse = impl.flash_attention.flash_attention_forward(q, k, v, causal=causal, scale=300.0, block_q=5, block_k=7)
    hint = "subtract the running max m_i before every exp: exp(S - m_new), never exp(S)"
    assert_no_nan(out, what="out with huge logits", hint=hint)
    assert torch.isfinite(out).all(), f"out has infinities with huge logits. hint: {hint}"
    expected_out, expected_lse = attention_lse_ref(q, k, v, causal=causal, scale=300.0)
    assert_close(out, expected_out, what="out with logits in the thousands", hint=hint)
    assert_close(lse, expected_lse, dtype=torch.float64, what="lse with logits in the thousands",
                 hint="lse = m_i + log(l_i): the max goes back in")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32],
                         ids=["float16", "bfloat16", "float32"])
def test_large_logits_do_not_overflow(impl, dtype):
    # Scores up to ~ 300: exp overflows float16 above 11 and float32 above 88.
    q, k, v = make_qkv(1, 2, 40, 50, 16, seed=23, dtype=dtype)
    out, lse = impl.flash_attention.flash_attention_forward(q, k, v, causal=True, scale=30.0, block_q=16, block_k=16)
    hint = (f"{dtype}: compute in float32 and subtract the running max before exp; the max goes into lse, "
            "so lse is as large as the largest score")
    assert torch.isfinite(out).all(), f"out has inf or NaN with large logits. hint: {hint}"
    expected_out, expected_lse = attention_lse_ref(q, k, v, causal=True, scale=30.0)
    assert_close(lse, expected_lse, dtype=torch.float32, what=f"lse with large logits ({dtype} inputs)", hint=hint)
    if dtype != torch.float32:  # float32's own rounding of scores ~300 exceeds its table's atol; half's does not
        assert_close(out, expected_out, dtype=dtype, what=f"out with large logits ({dtype})", hint=hint)


# ------------------------------------------------------ causal block skipping --

@pytest.mark.parametrize("lq,lk,block_q,block_k", [(96, 96, 12, 12), (40, 100, 16, 16), (100, 40, 16, 8),
                                                   (70, 70, 16, 24)],
                         ids=["square", "lq_lt_lk", "lq_gt_lk", "uneven_blocks"])
def test_causal_forward_skips_hidden_key_blocks(impl, lq, lk, block_q, block_k):
    B, H, D = 1, 2, 8
    q, k, v = make_qkv(B, H, lq, lk, D, seed=24)
    fa = impl.flash_attention

    def forward(causal):
        return matmul_flops(
            lambda: fa.flash_attention_forward(q, k, v, causal=causal, block_q=block_q, block_k=block_k))

    full = 2 * (2 * B * H * lq * lk * D)  # QK^T and PV over the whole matrix
    needed = sum(2 * (2 * B * H * rows * keys * D) for rows, keys in visible_tiles(lq, lk, block_q, block_k, True))
    got_full, got_causal = forward(False), forward(True)
    assert got_full <= full, (
        f"the non-causal forward does {got_full} matmul FLOPs, more than the {full} of Q K^T and P V: "
        "each tile should be multiplied once for S and once for P V")
    assert got_causal <= needed, (
        f"causal forward (Lq={lq}, Lk={lk}, blocks {block_q} x {block_k}) does {got_causal} matmul FLOPs "
        f"({got_causal / full:.0%} of the full matrix); computing only the tiles with a visible pair needs {needed} "
        f"({needed / full:.0%}). hint: for a query block ending at q_end, stop the key loop at "
        "q_end + Lk - Lq: later key blocks lie wholly above the diagonal, so skip them instead of masking them")


@pytest.mark.parametrize("lq,lk", [(96, 96), (40, 100)], ids=["square", "lq_lt_lk"])
def test_causal_backward_skips_hidden_key_blocks(impl, lq, lk):
    B, H, D, block = 1, 2, 8, 16
    q, k, v = make_qkv(B, H, lq, lk, D, seed=25)
    grad_out = randn(B, H, lq, D, seed=26)
    fa = impl.flash_attention
    out, lse = fa.flash_attention_forward(q, k, v, causal=True, block_q=block, block_k=block)
    got = matmul_flops(lambda: fa.flash_attention_backward(q, k, v, out, lse, grad_out, causal=True,
                                                           block_q=block, block_k=block))
    # Five products per tile: S = Q K^T, dP = dO V^T, dV += P^T dO, dQ += dS K, dK += dS^T Q.
    needed = sum(5 * (2 * B * H * rows * keys * D) for rows, keys in visible_tiles(lq, lk, block, block, True))
    full = 5 * (2 * B * H * lq * lk * D)
    assert got <= needed, (
        f"causal backward does {got} matmul FLOPs ({got / full:.0%} of five full Lq x Lk products); the visible "
        f"tiles need {needed} ({needed / full:.0%}). hint: loop over exactly the tiles the forward computed")


# -------------------------------------------------------------- gradients --

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("causal", CAUSAL)
def test_half_precision_gradients(impl, device, dtype, causal):
    q, k, v = make_qkv(2, 2, 27, 38, 16, seed=27, dtype=dtype, device=device, requires_grad=True)
    grad_out = randn(2, 2, 27, 16, seed=28, dtype=dtype, device=device)
    out = impl.flash_attention.flash_attention(q, k, v, causal=causal, block_q=8, block_k=16)
    out.backward(grad_out)
    for name, leaf, want in zip(("q.grad", "k.grad", "v.grad"), (q, k, v), reference_grads(q, k, v, grad_out, causal)):
        assert leaf.grad.dtype == dtype, f"{name} should be {dtype} like the input, got {leaf.grad.dtype}"
        assert_close(leaf.grad, want, dtype=dtype, what=f"{name} ({dtype})",
                     hint="compute the backward in float32 too and cast dq, dk, dv back once")


def test_float16_fully_masked_rows_backward(impl):
    q, k, v = make_qkv(1, 2, 12, 5, 8, seed=29, dtype=torch.float16, requires_grad=True)
    out = impl.flash_attention.flash_attention(q, k, v, causal=True, block_q=4, block_k=2)
    out.backward(randn(1, 2, 12, 8, seed=30, dtype=torch.float16))
    for name, leaf in (("out", out), ("q.grad", q.grad), ("k.grad", k.grad), ("v.grad", v.grad)):
        assert_no_nan(leaf, what=f"{name} (float16, rows 0..6 fully masked)",
                      hint="rows that see no key: out 0, P recomputed as 0, gradients 0")
    assert not q.grad[:, :, :7].any(), "q.grad of the fully masked rows 0..6 should be exactly zero"


def test_gradient_flows_to_the_inputs_that_ask_for_it(impl):
    q, k, v = make_qkv(1, 2, 9, 11, 4, seed=31, dtype=torch.float64)
    q.requires_grad_(True)  # k and v are constants here
    out = impl.flash_attention.flash_attention(q, k, v, causal=True, block_q=4, block_k=4)
    grad_out = randn(1, 2, 9, 4, seed=32, dtype=torch.float64)
    out.backward(grad_out)
    assert_close(q.grad, reference_grads(q, k, v, grad_out, causal=True)[0], what="q.grad when only q requires grad",
                 hint="FlashAttentionFunction.backward returns one gradient per input of forward (None for the rest)")


def test_gradcheck_with_custom_scale_and_value_width(impl):
    q, k, v = make_qkv(1, 1, 6, 5, 3, v_dim=4, seed=33, dtype=torch.float64, requires_grad=True)

    def attention(q, k, v):
        return impl.flash_attention.flash_attention(q, k, v, causal=True, scale=0.7, block_q=4, block_k=2)

    assert torch.autograd.gradcheck(attention, (q, k, v), eps=1e-6, atol=1e-6), "gradcheck failed (scale=0.7, Dv=4)"


# ------------------------------------------------------------------ layouts --

def test_non_contiguous_inputs(impl, device):
    # (B, L, H, D) tensors viewed as (B, H, L, D), as a model's projections produce them.
    q = randn(2, 21, 3, 8, seed=34, device=device).transpose(1, 2)
    k = randn(2, 30, 3, 8, seed=35, device=device).transpose(1, 2)
    v = randn(2, 30, 3, 8, seed=36, device=device).transpose(1, 2)
    out, lse = impl.flash_attention.flash_attention_forward(q, k, v, causal=True, block_q=8, block_k=8)
    expected_out, expected_lse = attention_lse_ref(q, k, v, causal=True)
    assert_close(out, expected_out, what="out of transposed (non-contiguous) inputs",
                 hint="slice along dim 2 and use matmul; do not .view a non-contiguous tensor")
    assert_close(lse, expected_lse, what="lse of transposed inputs")


def test_value_width_of_its_own(impl):
    q, k, v = make_qkv(2, 2, 14, 19, 8, v_dim=5, seed=37)
    out, lse = impl.flash_attention.flash_attention_forward(q, k, v, causal=True, block_q=4, block_k=6)
    assert tuple(out.shape) == (2, 2, 14, 5), f"out should be (B, H, Lq, Dv) = (2, 2, 14, 5), got {tuple(out.shape)}"
    expected_out, _ = attention_lse_ref(q, k, v, causal=True)
    assert_close(out, expected_out, what="out with Dv = 5 != D = 8", hint="acc is (B, H, block_q, Dv)")


@pytest.mark.parametrize("causal", CAUSAL)
def test_single_query_decoding_step(impl, causal):
    # One new query against 77 cached keys: bottom-right causal sees every key.
    q, k, v = make_qkv(2, 4, 1, 77, 16, seed=38, dtype=torch.float64)
    out, _ = impl.flash_attention.flash_attention_forward(q, k, v, causal=causal, block_q=64, block_k=16)
    expected_out, _ = attention_lse_ref(q, k, v, causal=False)
    assert_close(out, expected_out, what="a single query over 77 keys",
                 hint="with Lq = 1 the query is the LAST position: bottom-right causal hides nothing")


# ---------------------------------------------------------------- bad input --

def test_bad_backward_input_is_rejected(impl):
    fa = impl.flash_attention
    q, k, v = make_qkv(1, 2, 6, 5, 4, seed=39)
    out, lse = fa.flash_attention_forward(q, k, v)
    backward = fa.flash_attention_backward
    assert_rejects(lambda: backward(q, k, v, out, lse.to(torch.float16), out), "lse")
    assert_rejects(lambda: backward(q, k, v, out, lse, out.long()), "grad_out")
    assert_rejects(lambda: backward(q, k, v, out, lse[:, :, :, None], out), "lse")
    assert_rejects(lambda: backward(q, k, v, out, [0.0], out), "lse")
    assert_rejects(lambda: backward(q, k, v[:, :, :3], out, lse, out), "v", "k")
    assert_rejects(lambda: backward(q, k, v, out, lse, out, causal=1), "causal")
    assert_rejects(lambda: backward(q, k, v, out, lse, out, scale=math.inf), "scale")


def test_bad_arguments_name_themselves(impl):
    q, k, v = make_qkv(1, 2, 6, 5, 4, seed=40)
    forward = impl.flash_attention.flash_attention_forward
    assert_rejects(lambda: forward(q, k, v, block_q=True), "block_q")
    assert_rejects(lambda: forward(q, k, v, block_k=0), "block_k")
    assert_rejects(lambda: forward(q, k, v, scale=math.nan), "scale")
    assert_rejects(lambda: forward(q[None], k[None], v[None]), "q", "k", "v")
    assert_rejects(lambda: forward("q", k, v), "q")
    assert_rejects(lambda: forward(q, k, v.half()), "v", "dtype")
    assert_rejects(lambda: forward(q, k, v[:, :1]), "v", "k", "heads")
    assert_rejects(lambda: impl.flash_attention.flash_attention(q, k, v, causal=torch.tensor(True)), "causal")


@pytest.mark.parametrize("shape", ["lq_0", "lk_0", "batch_0"])
def test_zero_sizes_give_empty_results(impl, shape):
    # Zero-length dimensions are valid (the course's convention): an empty, correctly shaped result; with
    # Lk = 0 every row sees no key, so out is 0 and lse -inf, as for any fully masked row.
    (b, lq, lk) = {"lq_0": (2, 0, 5), "lk_0": (2, 4, 0), "batch_0": (0, 4, 5)}[shape]
    q, k, v = make_qkv(b, 2, lq, lk, 4, seed=41, dtype=torch.float64, requires_grad=True)
    fa = impl.flash_attention
    out, lse = fa.flash_attention_forward(q, k, v, causal=True, block_q=3, block_k=2)
    assert tuple(out.shape) == (b, 2, lq, 4) and tuple(lse.shape) == (b, 2, lq), (
        f"{shape}: out {tuple(out.shape)}, lse {tuple(lse.shape)}; expected {(b, 2, lq, 4)} and {(b, 2, lq)}")
    assert lse.dtype == torch.float64, f"lse of float64 inputs is float64, got {lse.dtype}"
    assert not out.any() and torch.isneginf(lse).all(), f"{shape}: rows that see no key give out 0 and lse -inf"
    fa.flash_attention(q, k, v, causal=True, block_q=3, block_k=2).sum().backward()
    for name, leaf in (("q", q), ("k", k), ("v", v)):
        assert leaf.grad is not None and leaf.grad.shape == leaf.shape and not leaf.grad.any(), (
            f"{shape}: {name}.grad should be zeros of shape {tuple(leaf.shape)}")


# ===========================================================================
# Part 2 (L05.2), the stretch exercise: the Triton backward kernels (and the
# autograd wrapper triton_flash_attention), on a GPU or under the interpreter.
# ===========================================================================
def triton_inputs(lq, lk, *, heads=4, kv_heads=2, head_dim=16, batch=1, seed=0, dtype=torch.float32,
                  device="cpu", requires_grad=False):
    """q (B, H, Lq, D); k, v (B, Hkv, Lk, D)."""
    q = randn(batch, heads, lq, head_dim, seed=seed, dtype=dtype, device=device, requires_grad=requires_grad)
    k = randn(batch, kv_heads, lk, head_dim, seed=seed + 1, dtype=dtype, device=device, requires_grad=requires_grad)
    v = randn(batch, kv_heads, lk, head_dim, seed=seed + 2, dtype=dtype, device=device, requires_grad=requires_grad)
    return q, k, v


def triton_reference(q, k, v, causal=False, window=None):
    """float64 out, differentiable; query head h reads key/value head h // (H // Hkv)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return attention_lse_ref(q, k, v, causal=causal, window=window)[0]


def eager_attention(q, k, v, causal=False):
    """Plain PyTorch in q's dtype: the yardstick for half-precision error."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, Lq, D) @ (B, H, D, Lk) -> (B, H, Lq, Lk)
    if causal:
        scores = scores.masked_fill(~causal_mask_ref(q.shape[-2], k.shape[-2], device=q.device), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


TRITON_GRAD_HINTS = {
    "q": "dQ = sm_scale * dS K with dS = P * (dP - D), D = rowsum(dO * O), P = exp2(qk - lse * log2(e))",
    "k": "dK = sm_scale * dS^T Q, summed over the query heads that share the key head (GQA)",
    "v": "dV = P^T dO, summed over the query heads that share the value head (GQA)"}


@pytest.mark.triton
@pytest.mark.parametrize("case", ["full_tail", "causal_lq_lt_lk", "causal_lq_gt_lk", "gqa_window"])
def test_triton_backward_matches_autograd_reference(impl, triton_device, case):
    lq, lk, kv_heads, causal, window = {
        "full_tail": (37, 37, 4, False, None),
        "causal_lq_lt_lk": (20, 45, 2, True, None),
        "causal_lq_gt_lk": (45, 20, 2, True, None),
        "gqa_window": (40, 40, 1, True, 9),
    }[case]
    q, k, v = triton_inputs(lq, lk, kv_heads=kv_heads, device=triton_device, requires_grad=True)
    grad_out = randn(*q.shape, seed=7, device=triton_device)
    out = impl.flash_attention_triton.triton_flash_attention(q, k, v, causal=causal, window=window)
    assert out.requires_grad, "triton_flash_attention must be differentiable: TritonFlashAttentionFunction.apply"
    got = torch.autograd.grad(out, (q, k, v), grad_out)
    want = torch.autograd.grad(triton_reference(q, k, v, causal=causal, window=window), (q, k, v),
                               grad_out.to(torch.float64))
    for name, g, w in zip("qkv", got, want):
        assert_close(g, w, what=f"triton d{name} ({case})", hint=TRITON_GRAD_HINTS[name])


@pytest.mark.triton
def test_triton_fully_masked_rows_backward(impl, triton_device):
    q, k, v = triton_inputs(30, 12, device=triton_device, requires_grad=True)
    out = impl.flash_attention_triton.triton_flash_attention(q, k, v, causal=True)
    empty = slice(0, 30 - 12)  # rows at negative positions see no key
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    hint = ("a row that sees no key has lse = -inf, and P = exp2(qk - lse2) must be exactly 0 there: mask P with "
            "tl.where after the exp2 (a product with the mask gives inf * 0 = NaN), or replace lse = -inf by +inf")
    for name, g in zip("qkv", grads):
        assert_no_nan(g, what=f"d{name} with fully masked rows", hint=hint)
    assert torch.all(grads[0][:, :, empty] == 0), f"dq of a row that sees no key must be 0. hint: {hint}"
    want = torch.autograd.grad(triton_reference(q, k, v, causal=True), (q, k, v),
                               torch.ones_like(out, dtype=torch.float64))
    for name, g, w in zip("qkv", grads, want):
        assert_close(g, w, what=f"triton d{name} with fully masked rows", hint=hint)


@pytest.mark.triton
def test_triton_float16_gradients_within_eager_error(impl, triton_device):
    q, k, v = triton_inputs(40, 40, device=triton_device, dtype=torch.float16, requires_grad=True)
    out = impl.flash_attention_triton.triton_flash_attention(q, k, v, causal=True)
    grad_out = randn(*q.shape, seed=3, device=triton_device, dtype=torch.float16)
    got = torch.autograd.grad(out, (q, k, v), grad_out)
    want_g = torch.autograd.grad(triton_reference(q, k, v, causal=True), (q, k, v), grad_out.to(torch.float64))
    eager_g = torch.autograd.grad(eager_attention(q, k, v, causal=True), (q, k, v), grad_out)
    for name, g, w, e in zip("qkv", got, want_g, eager_g):
        assert g.dtype == torch.float16, f"d{name} should be float16 like {name}, got {g.dtype}"
        assert_within_eager_error(g, w, e, what=f"triton float16 d{name}",
                                  hint="D, P, dP and dS in float32; round only the matmul inputs and the result")


@pytest.mark.triton
@pytest.mark.parametrize("shape", ["lq_0", "lk_0", "batch_0"])
def test_triton_zero_sizes_give_empty_results(impl, triton_device, shape):
    b, lq, lk = {"lq_0": (1, 0, 5), "lk_0": (1, 4, 0), "batch_0": (0, 4, 5)}[shape]
    q, k, v = triton_inputs(lq, lk, batch=b, device=triton_device, requires_grad=True)
    ft = impl.flash_attention_triton
    out, lse = ft.triton_flash_attention_forward(q, k, v, causal=True)
    assert tuple(out.shape) == tuple(q.shape) and tuple(lse.shape) == tuple(q.shape[:3]), (
        f"{shape}: out {tuple(out.shape)}, lse {tuple(lse.shape)}; zero sizes give empty, correctly shaped results")
    assert not out.any() and torch.isneginf(lse).all(), f"{shape}: rows that see no key give out 0 and lse -inf"
    ft.triton_flash_attention(q, k, v, causal=True).sum().backward()
    for name, leaf in (("q", q), ("k", k), ("v", v)):
        assert leaf.grad is not None and leaf.grad.shape == leaf.shape and not leaf.grad.any(), (
            f"{shape}: {name}.grad should be zeros of shape {tuple(leaf.shape)}")


@pytest.mark.triton
def test_triton_kernel_rules_are_checked(impl, triton_device):
    ft = impl.flash_attention_triton
    q, k, v = triton_inputs(8, 8, device=triton_device)
    v_wide = randn(1, 2, 8, 32, seed=5, device=triton_device)
    # The kernels need Dv == D (the PyTorch path of Part 1 does not): a ValueError naming v.
    for fn in (ft.triton_flash_attention_forward, ft.triton_flash_attention):
        assert_rejects(lambda: fn(q, k, v_wide), "v")
        for flag in ("yes", 1, None, torch.tensor(True)):
            assert_rejects(lambda: fn(q, k, v, causal=flag), "causal")
        assert_rejects(lambda: fn(q, k, v, causal=True, window=2.5), "window")
        assert_rejects(lambda: fn(q, k, v, causal=True, window=-1), "window")
        assert_rejects(lambda: fn(q, k, v, scale=math.nan), "scale")


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("dtype", [pytest.param(torch.float16, id="float16"), pytest.param(torch.bfloat16, id="bfloat16")])
@pytest.mark.parametrize("head_dim", [64, 128, 96])
@pytest.mark.parametrize("causal", CAUSAL)
def test_triton_gpu_backward_realistic(impl, dtype, head_dim, causal):
    q, k, v = triton_inputs(1000, 1000, heads=8, kv_heads=2, head_dim=head_dim, batch=2, dtype=dtype,
                            device="cuda", requires_grad=True)
    out = impl.flash_attention_triton.triton_flash_attention(q, k, v, causal=causal)
    want = triton_reference(q, k, v, causal=causal)
    eager = eager_attention(q, k, v, causal=causal)
    grad_out = randn(*q.shape, seed=5, dtype=dtype, device="cuda")
    got = torch.autograd.grad(out, (q, k, v), grad_out)
    want_g = torch.autograd.grad(want, (q, k, v), grad_out.to(torch.float64))
    eager_g = torch.autograd.grad(eager, (q, k, v), grad_out)
    for name, g, w, e in zip("qkv", got, want_g, eager_g):
        assert_within_eager_error(g, w, e, what=f"d{name} (D={head_dim}, {dtype})")
