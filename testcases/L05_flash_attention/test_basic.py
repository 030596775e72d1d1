"""L05 basic suite, both parts of the lesson.

Part 1 (L05.1, flash_attention.py, the tests not marked `triton`): forward out
and lse, causal (bottom-right) and not, Lq != Lk both ways, block sizes that do
not divide the lengths or exceed them, float32/float64 and float16/bfloat16
inputs, fully masked rows, the backward against autograd through a float64
reference, gradcheck, the proof that no Lq x Lk tensor is ever created (forward
and backward), and input validation.

Part 2 (L05.2, flash_attention_triton.py, the `triton` tests at the end): the
forward kernel only (out and lse, causal, tails, GQA, sliding window, fully
masked rows, float16, strided inputs, bad input). The Triton backward is the
stretch exercise: its tests are in the advanced suite.

Run: ./course test L05.1, ./course test L05.2, or ./course test L05 for both
(or: pytest testcases/L05_flash_attention -m "basic and not triton")
Expected values come from coursekit.reference.attention_lse_ref: float64
einsum attention with the bottom-right causal mask and its logsumexp,
differentiable, so torch.autograd.grad through it gives the reference
gradients.
"""

import pytest
import torch

from coursekit.reference import attention_lse_ref, causal_mask_ref, sliding_window_mask_ref
from coursekit.testing import (assert_close, assert_never_materialises, assert_no_nan, assert_rejects,
                               assert_within_eager_error, make_qkv, randn)

# ----------------------------------------------------------------- helpers --

# (Lq, Lk, block_q, block_k): lengths that are not multiples of the blocks, both
# orders of Lq and Lk, single queries, blocks larger than the sequence, 1 x 1 tiles.
SHAPES = {
    "square_dividing": (48, 48, 16, 16),
    "not_dividing": (37, 53, 8, 12),
    "lq_lt_lk": (19, 45, 8, 16),
    "lq_gt_lk": (45, 19, 16, 8),
    "one_query": (1, 29, 4, 8),
    "blocks_larger_than_seq": (13, 11, 64, 64),
    "tiles_1x1": (9, 7, 1, 1),
}
CAUSAL = [pytest.param(False, id="full"), pytest.param(True, id="causal")]

FORWARD_HINT = (
    "for each query block keep m_i (running max), l_i (running sum of exp(s - m_i)) and acc (running sum of "
    "exp(s - m_i) v); for each key block: m_new = max(m_i, rowmax(S)), alpha = exp(m_i - m_new), "
    "l_i = alpha * l_i + rowsum(P), acc = alpha * acc + P V with P = exp(S - m_new); at the end out = acc / l_i. "
    "The last block of a length that block_k does not divide is shorter, not dropped")
CAUSAL_HINT = (
    "causal is bottom-right: query i sees keys j <= i + Lk - Lq, the diagonal included. The key loop of a query "
    "block [q_start, q_end) runs over keys [0, q_end + Lk - Lq) (clamped to [0, Lk]), and blocks that cross the "
    "diagonal need the mask inside, built from absolute positions: row r of the tile is query q_start + r and "
    "column c is key k_start + c (a mask from the tile's own 0..block-1 indices is right only for the first "
    "tile). A top-left mask (j <= i) agrees only when Lq == Lk")
LSE_HINT = (
    "lse is the natural-log logsumexp of the row's visible scores, m_i + log(l_i): not log(l_i) alone (the max was "
    "subtracted from every exponent), not log2. A row that sees no key has lse -inf")
BACKWARD_HINT = (
    "recompute P = exp(S - lse) block by block (masked like the forward), D_i = rowsum(dO * O); then "
    "dV += P^T dO, dP = dO V^T, dS = P * (dP - D_i) * scale, dQ += dS K, dK += dS^T Q. The scale enters "
    "once, through dS")


def inputs(lq, lk, *, batch=2, heads=3, head_dim=8, seed=0, dtype=torch.float32, device="cpu", requires_grad=False):
    """Seeded q (B, H, Lq, D), k, v (B, H, Lk, D)."""
    return make_qkv(batch, heads, lq, lk, head_dim, seed=seed, dtype=dtype, device=device,
                    requires_grad=requires_grad)


def reference(q, k, v, causal=False, scale=None):
    """(out, lse) in float64 from coursekit.reference (differentiable)."""
    return attention_lse_ref(q, k, v, causal=causal, scale=scale)


def reference_grads(q, k, v, grad_out, causal=False, scale=None):
    """(dq, dk, dv) in float64: autograd through the float64 reference."""
    leaves = [t.detach().to(torch.float64).requires_grad_() for t in (q, k, v)]
    out, _ = reference(*leaves, causal=causal, scale=scale)
    return torch.autograd.grad(out, leaves, grad_out.to(torch.float64))


def describe(lq, lk, bq, bk, causal):
    return f"Lq={lq}, Lk={lk}, block_q={bq}, block_k={bk}, causal={causal}"


# ------------------------------------------------------------------ forward --

@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
def test_forward_out_matches_reference(impl, device, shape, causal):
    lq, lk, bq, bk = SHAPES[shape]
    q, k, v = inputs(lq, lk, seed=1, device=device)
    out, lse = impl.flash_attention.flash_attention_forward(q, k, v, causal=causal, block_q=bq, block_k=bk)
    assert tuple(out.shape) == tuple(q.shape), (
        f"out has shape {tuple(out.shape)}, expected (B, H, Lq, D) = {tuple(q.shape)}")
    assert out.dtype == q.dtype and out.device == q.device, (
        f"out is {out.dtype} on {out.device}, expected {q.dtype} on {q.device}")
    expected, _ = reference(q, k, v, causal=causal)
    assert_close(out, expected, what=f"out ({describe(lq, lk, bq, bk, causal)})",
                 hint=CAUSAL_HINT if causal else FORWARD_HINT)


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
def test_forward_lse_matches_reference(impl, device, shape, causal):
    lq, lk, bq, bk = SHAPES[shape]
    q, k, v = inputs(lq, lk, seed=2, device=device)
    _, lse = impl.flash_attention.flash_attention_forward(q, k, v, causal=causal, block_q=bq, block_k=bk)
    assert isinstance(lse, torch.Tensor) and tuple(lse.shape) == (2, 3, lq), (
        f"lse should be a (B, H, Lq) = (2, 3, {lq}) tensor, got {getattr(lse, 'shape', type(lse).__name__)}")
    assert lse.dtype == torch.float32, f"lse of float32 inputs should be float32, got {lse.dtype}"
    _, expected = reference(q, k, v, causal=causal)
    assert_close(lse, expected, what=f"lse ({describe(lq, lk, bq, bk, causal)})",
                 hint=LSE_HINT + (". " + CAUSAL_HINT if causal else ""))


@pytest.mark.parametrize("causal", CAUSAL)
def test_float64_matches_to_rounding(impl, causal):
    # In float64 the only difference from the reference is the order of summation.
    q, k, v = inputs(29, 41, seed=3, dtype=torch.float64)
    out, lse = impl.flash_attention.flash_attention_forward(q, k, v, causal=causal, block_q=6, block_k=9)
    expected_out, expected_lse = reference(q, k, v, causal=causal)
    assert out.dtype == torch.float64, f"float64 inputs should give a float64 out, got {out.dtype}"
    assert lse.dtype == torch.float64, (
        f"float64 inputs should give a float64 lse (the course's rule on the PyTorch paths), got {lse.dtype}")
    assert_close(out, expected_out, what="float64 out", hint=FORWARD_HINT)
    assert_close(lse, expected_lse, dtype=torch.float64, what="float64 lse", hint=LSE_HINT)


@pytest.mark.parametrize("causal", CAUSAL)
def test_custom_scale(impl, causal):
    q, k, v = inputs(21, 17, seed=4)
    out, lse = impl.flash_attention.flash_attention_forward(q, k, v, causal=causal, scale=0.37, block_q=8, block_k=5)
    expected_out, expected_lse = reference(q, k, v, causal=causal, scale=0.37)
    hint = "scale multiplies every score q.k (default 1/sqrt(D) only when scale is None)"
    assert_close(out, expected_out, what="out with scale=0.37", hint=hint)
    assert_close(lse, expected_lse, what="lse with scale=0.37", hint=hint)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("causal", CAUSAL)
def test_half_precision_inputs(impl, device, dtype, causal):
    q, k, v = inputs(33, 47, seed=5, dtype=dtype, device=device)
    out, lse = impl.flash_attention.flash_attention_forward(q, k, v, causal=causal, block_q=16, block_k=16)
    assert out.dtype == dtype, f"out should keep the input dtype {dtype}, got {out.dtype}"
    assert lse.dtype == torch.float32, f"lse is float32 for {dtype} inputs (the running statistics), got {lse.dtype}"
    expected_out, expected_lse = reference(q, k, v, causal=causal)
    assert_close(out, expected_out, dtype=dtype, what=f"{dtype} out", hint=(
        "compute scores, exp, m_i, l_i and acc in float32 (cast q, k, v up first) and cast out back once at the end"))
    assert_close(lse, expected_lse, dtype=torch.float32, what=f"lse of {dtype} inputs",
                 hint="lse comes from the float32 running statistics: m_i + log(l_i)")


def test_fully_masked_rows_give_zero_and_minus_inf(impl, device):
    # Causal with Lq = 10 > Lk = 4: query i sees keys j <= i - 6, so rows 0..5 see nothing.
    q, k, v = inputs(10, 4, seed=6, device=device)
    out, lse = impl.flash_attention.flash_attention_forward(q, k, v, causal=True, block_q=3, block_k=2)
    hint = ("a row that sees no key keeps m_i = -inf and l_i = 0: guard exp(-inf - (-inf)) (use 0 for an infinite "
            "max) and the division acc / l_i; its out is 0 and its lse -inf")
    assert_no_nan(out, what="out with fully masked rows", hint=hint)
    assert_no_nan(lse, what="lse with fully masked rows", hint=hint)
    expected_out, expected_lse = reference(q, k, v, causal=True)
    assert_close(out, expected_out, what="out (rows 0..5 fully masked)", hint=hint)
    assert_close(lse, expected_lse, what="lse (rows 0..5 fully masked)", hint=hint)
    assert torch.isneginf(lse[:, :, :6]).all(), f"lse of the fully masked rows should be -inf, got {lse[0, 0, :6]}"


# ----------------------------------------------------------------- backward --

@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("shape", ["not_dividing", "lq_lt_lk", "lq_gt_lk", "blocks_larger_than_seq"])
def test_backward_matches_autograd_reference(impl, device, shape, causal):
    lq, lk, bq, bk = SHAPES[shape]
    fa = impl.flash_attention
    q, k, v = inputs(lq, lk, seed=7, dtype=torch.float64, device=device)
    grad_out = randn(2, 3, lq, 8, seed=8, dtype=torch.float64, device=device)
    out, lse = fa.flash_attention_forward(q, k, v, causal=causal, block_q=bq, block_k=bk)
    grads = fa.flash_attention_backward(q, k, v, out, lse, grad_out, causal=causal, block_q=bq, block_k=bk)
    assert isinstance(grads, tuple) and len(grads) == 3, "flash_attention_backward returns (dq, dk, dv)"
    for name, got, want, like in zip(("dq", "dk", "dv"), grads, reference_grads(q, k, v, grad_out, causal), (q, k, v)):
        assert tuple(got.shape) == tuple(like.shape), (
            f"{name} has shape {tuple(got.shape)}, expected {tuple(like.shape)}")
        assert_close(got, want, what=f"{name} ({describe(lq, lk, bq, bk, causal)})", hint=BACKWARD_HINT + (
            ". " + CAUSAL_HINT if causal else ""))


@pytest.mark.parametrize("causal", CAUSAL)
def test_autograd_function_float32(impl, device, causal):
    q, k, v = inputs(26, 35, seed=9, device=device, requires_grad=True)
    grad_out = randn(2, 3, 26, 8, seed=10, device=device)
    out = impl.flash_attention.flash_attention(q, k, v, causal=causal, block_q=8, block_k=16)
    assert out.requires_grad, "flash_attention must be differentiable: return FlashAttentionFunction.apply(...)"
    out.backward(grad_out)
    expected = reference_grads(q, k, v, grad_out, causal)
    for name, leaf, want in zip(("q.grad", "k.grad", "v.grad"), (q, k, v), expected):
        assert leaf.grad is not None, f"{name} is None: FlashAttentionFunction.backward must return dq, dk, dv first"
        assert_close(leaf.grad, want, what=name, hint=BACKWARD_HINT)


@pytest.mark.parametrize("lq,lk", [(5, 7), (7, 5), (6, 6)], ids=["lq_lt_lk", "lq_gt_lk", "square"])
@pytest.mark.parametrize("causal", CAUSAL)
def test_gradcheck_float64(impl, lq, lk, causal):
    # Blocks of 2 x 3 divide neither length; causal with Lq = 7 > Lk = 5 has two fully masked rows.
    q, k, v = make_qkv(1, 2, lq, lk, 3, seed=11, dtype=torch.float64, requires_grad=True)

    def attention(q, k, v):
        return impl.flash_attention.flash_attention(q, k, v, causal=causal, block_q=2, block_k=3)

    assert torch.autograd.gradcheck(attention, (q, k, v), eps=1e-6, atol=1e-6), (
        "the analytical gradients differ from finite differences. " + BACKWARD_HINT)


def test_gradients_of_fully_masked_rows_are_zero(impl):
    q, k, v = inputs(10, 4, seed=12, dtype=torch.float64, requires_grad=True)
    out = impl.flash_attention.flash_attention(q, k, v, causal=True, block_q=3, block_k=2)
    out.backward(randn(2, 3, 10, 8, seed=13, dtype=torch.float64))
    hint = ("rows with lse = -inf must recompute P = 0 (not exp(-inf - (-inf)) = NaN): replace their lse by +inf, "
            "or mask them, before exp(S - lse)")
    for name, leaf in (("q.grad", q), ("k.grad", k), ("v.grad", v)):
        assert_no_nan(leaf.grad, what=name, hint=hint)
    assert_close(q.grad[:, :, :6], torch.zeros(2, 3, 6, 8), what="q.grad of the fully masked rows 0..5", hint=hint)
    expected = reference_grads(q, k, v, randn(2, 3, 10, 8, seed=13, dtype=torch.float64), causal=True)
    for name, leaf, want in zip(("q.grad", "k.grad", "v.grad"), (q, k, v), expected):
        assert_close(leaf.grad, want, what=name, hint=BACKWARD_HINT)


# ------------------------------------------------------------------- memory --

@pytest.mark.parametrize("causal", CAUSAL)
def test_never_materialises_an_lq_by_lk_tensor(impl, causal):
    # One head's score matrix has Lq * Lk = 23 040 elements; q, k, v, out and the
    # gradients have at most B * H * L * D = 2 560, one block of scores 2 * 32 * 24 = 1 536.
    lq, lk = 160, 144
    q, k, v = make_qkv(1, 2, lq, lk, 8, seed=14, requires_grad=True)
    grad_out = randn(1, 2, lq, 8, seed=15)
    limit = lq * lk
    fa = impl.flash_attention
    hint = ("work block by block: the largest temporary should be one (B, H, block_q, block_k) tile of scores, "
            "never S = q @ k^T for the whole sequence (nor its mask, its softmax, or P for the backward)")
    out, lse = assert_never_materialises(
        lambda: fa.flash_attention_forward(q.detach(), k.detach(), v.detach(), causal=causal, block_q=32, block_k=24),
        limit, what="an Lq x Lk score matrix (160 x 144)", hint=hint)
    assert_never_materialises(
        lambda: fa.flash_attention_backward(q.detach(), k.detach(), v.detach(), out, lse, grad_out, causal=causal,
                                            block_q=32, block_k=24),
        limit, what="an Lq x Lk matrix of P or dS (160 x 144)", hint=hint + "; the backward recomputes P from lse")

    def train_step():
        fa.flash_attention(q, k, v, causal=causal, block_q=32, block_k=24).backward(grad_out)

    assert_never_materialises(train_step, limit, what="an Lq x Lk matrix (160 x 144)", hint=(
        hint + "; FlashAttentionFunction saves q, k, v, out and lse only"))
    expected_out, _ = reference(q, k, v, causal=causal)
    assert_close(out, expected_out, what="out of the long sequence", hint=FORWARD_HINT)


# -------------------------------------------------------------- bad input --

def test_bad_input_is_rejected(impl):
    fa = impl.flash_attention
    q, k, v = inputs(6, 5, seed=16)
    forward = fa.flash_attention_forward
    assert_rejects(lambda: forward(q, k, v, block_q=0), "block_q")
    assert_rejects(lambda: forward(q, k, v, block_k=-3), "block_k")
    assert_rejects(lambda: forward(q, k, v, block_q=2.5), "block_q")
    assert_rejects(lambda: forward(q[0], k[0], v[0]), "q", "k", "v")  # 3-D
    assert_rejects(lambda: forward(q, k[..., :7], v), "k", "q", "head_dim")  # D differs
    assert_rejects(lambda: forward(q, k, v[:, :, :4]), "v", "k")  # Lk differs
    assert_rejects(lambda: forward(q, k[:, :2], v[:, :2]), "k", "q", "v", "heads")  # heads differ
    assert_rejects(lambda: forward(q, k.double(), v), "k", "q", "dtype")
    assert_rejects(lambda: forward(q.long(), k.long(), v.long()), "q", "k", "v", "dtype")
    for flag in ("yes", 1, None, torch.tensor(True)):  # flags are Python bools (the course's convention)
        assert_rejects(lambda: forward(q, k, v, causal=flag), "causal")
    assert_rejects(lambda: forward(q, k, v, scale="0.5"), "scale")
    assert_rejects(lambda: fa.flash_attention(q, k, v, block_k=0), "block_k")
    out, lse = forward(q, k, v)
    backward = fa.flash_attention_backward
    assert_rejects(lambda: backward(q, k, v, out, lse[..., :3], out), "lse")
    assert_rejects(lambda: backward(q, k, v, out, lse, out[:, :, :2]), "grad_out")
    assert_rejects(lambda: backward(q, k, v, out[:, :1], lse, out), "out")
    assert_rejects(lambda: backward(q, k, v, out, lse, out, block_q=0), "block_q")


# ===========================================================================
# Part 2 (L05.2): the Triton forward kernel (flash_attention_triton). On a CUDA
# machine it runs on the GPU; without one, on CPU tensors under
# TRITON_INTERPRET=1 (the plugin sets it), which runs every program in Python,
# so shapes here stay small: one batch row where a second would only run the
# same programs again (the GQA and strided tests keep two, for the batch
# strides). Realistic shapes are in the `gpu` tests below. The backward
# kernels (the stretch exercise) are graded in test_advanced.py.
# ===========================================================================
def triton_inputs(lq, lk, *, heads=4, kv_heads=2, head_dim=16, batch=1, seed=0, dtype=torch.float32,
                  device="cpu", requires_grad=False):
    """q (B, H, Lq, D); k, v (B, Hkv, Lk, D)."""
    q = randn(batch, heads, lq, head_dim, seed=seed, dtype=dtype, device=device, requires_grad=requires_grad)
    k = randn(batch, kv_heads, lk, head_dim, seed=seed + 1, dtype=dtype, device=device, requires_grad=requires_grad)
    v = randn(batch, kv_heads, lk, head_dim, seed=seed + 2, dtype=dtype, device=device, requires_grad=requires_grad)
    return q, k, v


def triton_reference(q, k, v, causal=False, window=None, scale=None):
    """float64 (out, lse), differentiable; GQA by the spec's mapping: query
    head h reads key/value head h // (H // Hkv)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return attention_lse_ref(q, k, v, causal=causal, scale=scale, window=window)


def eager_attention(q, k, v, causal=False, window=None):
    """Plain PyTorch in q's dtype (scores, softmax and output rounded to it):
    the yardstick for half-precision error (coursekit.testing.EAGER_FACTOR)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, Lq, D) @ (B, H, D, Lk) -> (B, H, Lq, Lk)
    lq, lk = q.shape[-2], k.shape[-2]
    visible = causal_mask_ref(lq, lk, device=q.device) if causal else torch.ones(lq, lk, dtype=torch.bool,
                                                                                   device=q.device)
    if window is not None:
        visible = visible & sliding_window_mask_ref(lq, lk, window, device=q.device)
    return torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1) @ v


TRITON_SHAPES = {  # (Lq, Lk): tails of every kind for the 16 x 16 interpreter tiles
    "square_tail": (37, 37),
    "lq_lt_lk": (20, 45),
    "lq_gt_lk": (45, 20),
    "decode_one": (1, 29),
}
TRITON_HINTS = {
    "lq_lt_lk": "Lq < Lk is decoding with a cache: causal is bottom-right, query i sees keys j <= i + Lk - Lq",
    "lq_gt_lk": "Lq > Lk: the first Lq - Lk rows see no key under causal: out 0, lse -inf (no NaN)",
    "decode_one": "one query over all keys: with causal it sees every key",
    "square_tail": "37 is not a multiple of the tile: the last tile's rows and keys must be masked",
}
TRITON_MASK_HINT = (
    "_visible gets absolute indices: pos_m = query index + Lk - Lq and offs_n = start_n + arange(BLOCK_N) "
    "(never a tile's local 0..BLOCK-1); key j is visible iff j < Lk and, with causal, j <= pos")
TRITON_LSE_HINT = (
    "the kernel's m_i and l_i are in base 2 (qk = q.k * qk_scale with qk_scale = sm_scale * log2(e)); the stored "
    "lse is natural-log: lse = (m_i + log2(l_i)) * ln(2)")


@pytest.mark.triton
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("shape", TRITON_SHAPES, ids=list(TRITON_SHAPES))
def test_triton_forward_matches_reference(impl, triton_device, shape, causal):
    lq, lk = TRITON_SHAPES[shape]
    q, k, v = triton_inputs(lq, lk, device=triton_device)
    out, lse = impl.flash_attention_triton.triton_flash_attention_forward(q, k, v, causal=causal)
    assert tuple(out.shape) == tuple(q.shape) and out.dtype == q.dtype, (
        f"out is {tuple(out.shape)} {out.dtype}, expected {tuple(q.shape)} {q.dtype}")
    want_out, want_lse = triton_reference(q, k, v, causal=causal)
    hint = TRITON_HINTS[shape] + (". " + TRITON_MASK_HINT if causal else "")
    assert_close(out, want_out, what=f"triton out ({shape}, causal={causal})", hint=hint)
    assert lse.dtype == torch.float32 and tuple(lse.shape) == tuple(q.shape[:3]), (
        f"lse must be a float32 (B, H, Lq) = {tuple(q.shape[:3])} tensor, got {tuple(lse.shape)} {lse.dtype}")
    assert_close(lse, want_lse, what=f"triton lse ({shape}, causal={causal})", hint=hint + ". " + TRITON_LSE_HINT)


@pytest.mark.triton
def test_triton_custom_scale(impl, triton_device):
    q, k, v = triton_inputs(23, 23, device=triton_device, seed=4)
    out, lse = impl.flash_attention_triton.triton_flash_attention_forward(q, k, v, causal=True, scale=0.37)
    want_out, want_lse = triton_reference(q, k, v, causal=True, scale=0.37)
    hint = ("the launcher passes qk_scale = sm_scale * log2(e) with sm_scale = 0.37 here: multiply q.k by qk_scale "
            "once and use exp2 (not exp, and not the default 1/sqrt(D))")
    assert_close(out, want_out, what="triton out with scale=0.37", hint=hint)
    assert_close(lse, want_lse, what="triton lse with scale=0.37", hint=hint + ". " + TRITON_LSE_HINT)


@pytest.mark.triton
@pytest.mark.parametrize("kv_heads", [1, 2], ids=["mqa", "gqa_2"])
def test_triton_gqa_maps_heads_by_interleaving(impl, triton_device, kv_heads):
    q, k, v = triton_inputs(24, 24, heads=4, kv_heads=kv_heads, batch=2, device=triton_device)
    out, _ = impl.flash_attention_triton.triton_flash_attention_forward(q, k, v, causal=True)
    assert_close(out, triton_reference(q, k, v, causal=True)[0], what=f"triton GQA out (Hkv={kv_heads})",
                 hint="query head h must read key/value head h // (H // Hkv) (repeat_interleave), "
                      "not h % Hkv (.repeat)")


@pytest.mark.triton
@pytest.mark.parametrize("window,lq,lk", [(1, 33, 33), (7, 40, 40), (19, 21, 50), (64, 30, 30)],
                         ids=["w1", "w7_unaligned", "w19_lq_lt_lk", "w_ge_len"])
def test_triton_sliding_window(impl, triton_device, window, lq, lk):
    q, k, v = triton_inputs(lq, lk, device=triton_device)
    out, lse = impl.flash_attention_triton.triton_flash_attention_forward(q, k, v, causal=True, window=window)
    want_out, want_lse = triton_reference(q, k, v, causal=True, window=window)
    hint = (f"window {window}: key j is visible from position p iff 0 <= p - j < {window} "
            f"(exactly {window} keys once p >= {window - 1}); positions are bottom-right aligned; "
            "_key_tiles' lo must not skip a tile that holds a visible key")
    assert_close(out, want_out, what=f"triton windowed out (W={window}, Lq={lq}, Lk={lk})", hint=hint)
    assert_close(lse, want_lse, what=f"triton windowed lse (W={window})", hint=hint)


@pytest.mark.triton
def test_triton_fully_masked_rows(impl, triton_device):
    q, k, v = triton_inputs(30, 12, device=triton_device)
    out, lse = impl.flash_attention_triton.triton_flash_attention_forward(q, k, v, causal=True)
    empty = slice(0, 30 - 12)  # rows at negative positions see no key
    hint = ("a row that sees no key keeps m_i = -inf and l_i = 0: use 0 for an infinite max before exp2 "
            "(exp2(-inf - (-inf)) is NaN) and divide by 1 where l_i = 0; store out 0 and lse -inf")
    assert_no_nan(out, what="triton out with fully masked rows", hint=hint)
    assert_no_nan(lse, what="triton lse with fully masked rows", hint=hint)
    assert torch.all(out[:, :, empty] == 0), f"a row that sees no key must give output exactly 0. hint: {hint}"
    assert torch.all(torch.isneginf(lse[:, :, empty])), f"a row that sees no key has lse = -inf. hint: {hint}"
    want_out, want_lse = triton_reference(q, k, v, causal=True)
    assert_close(out, want_out, what="triton out (rows 0..17 see no key)", hint=hint)
    assert_close(lse, want_lse, what="triton lse (rows 0..17 see no key)", hint=hint)


@pytest.mark.triton
def test_triton_float16_within_eager_error(impl, triton_device):
    q, k, v = triton_inputs(40, 40, device=triton_device, dtype=torch.float16)
    out, lse = impl.flash_attention_triton.triton_flash_attention_forward(q, k, v, causal=True)
    assert out.dtype == torch.float16, f"output must keep the input dtype float16, got {out.dtype}"
    assert lse.dtype == torch.float32, f"lse is float32 statistics even for float16 inputs, got {lse.dtype}"
    want, want_lse = triton_reference(q, k, v, causal=True)
    assert_within_eager_error(out, want, eager_attention(q, k, v, causal=True), what="triton float16 out",
                              hint="scores, softmax statistics and the accumulator belong in float32")
    assert_close(lse, want_lse, dtype=torch.float16, what="triton lse of float16 inputs",
                 hint="lse comes from the float32 statistics m_i, l_i")


@pytest.mark.triton
def test_triton_accepts_strided_inputs(impl, triton_device):
    # projections come out as (B, L, H, D); attention reads them as (B, H, L, D) views, without a copy
    q, k, v = (randn(2, 21, h, 16, seed=s, device=triton_device).transpose(1, 2) for s, h in ((0, 4), (1, 2), (2, 2)))
    v = randn(2, 2, 21, 32, seed=3, device=triton_device)[..., ::2]  # head_dim stride 2
    out, _ = impl.flash_attention_triton.triton_flash_attention_forward(q, k, v, causal=True)
    assert_close(out, triton_reference(q, k, v, causal=True)[0], what="triton out for strided q, k, v",
                 hint="read q, k, v through their strides (or make them contiguous first)")


@pytest.mark.triton
def test_triton_bad_input_is_rejected(impl, triton_device):
    ft = impl.flash_attention_triton
    q, k, v = triton_inputs(8, 8, heads=4, kv_heads=2, device=triton_device)
    forward = ft.triton_flash_attention_forward
    assert_rejects(lambda: forward(q[0], k[0], v[0]), "q", "k", "v")
    q3 = randn(1, 3, 8, 16, device=triton_device)
    assert_rejects(lambda: forward(q3, k, v), "heads", "q", "k")
    assert_rejects(lambda: forward(q, k, v[..., :8]), "v")
    assert_rejects(lambda: forward(q, k, v, causal=True, window=0), "window")
    assert_rejects(lambda: forward(q.double(), k.double(), v.double()), "float64", "dtype", "q")
    assert_rejects(lambda: forward(q, k.half(), v), "dtype", "k")
    for flag in ("yes", 1, None):
        assert_rejects(lambda: forward(q, k, v, causal=flag), "causal")


# --- on a CUDA GPU, at the sizes the kernels are for --------------------------
@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("window", [None, 1, 100, 257])
def test_triton_gpu_window_and_decoding_shapes(impl, window):
    q, k, v = triton_inputs(300, 1500, heads=8, kv_heads=8, head_dim=64, dtype=torch.bfloat16, device="cuda")
    out, lse = impl.flash_attention_triton.triton_flash_attention_forward(q, k, v, causal=True, window=window)
    want, want_lse = triton_reference(q, k, v, causal=True, window=window)
    assert_within_eager_error(out, want, eager_attention(q, k, v, causal=True, window=window),
                              what=f"windowed out (W={window})")
    assert_close(lse, want_lse, dtype=torch.float32, atol=1e-4, rtol=1e-4, what=f"windowed lse (W={window})",
                 hint="lse is float32 statistics even for bfloat16 inputs")


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("dtype", [pytest.param(torch.float16, id="float16"), pytest.param(torch.bfloat16, id="bfloat16")])
@pytest.mark.parametrize("head_dim", [64, 128, 96])
@pytest.mark.parametrize("causal", CAUSAL)
def test_triton_gpu_forward_realistic(impl, dtype, head_dim, causal):
    q, k, v = triton_inputs(1000, 1000, heads=8, kv_heads=2, head_dim=head_dim, batch=2, dtype=dtype, device="cuda")
    out, _ = impl.flash_attention_triton.triton_flash_attention_forward(q, k, v, causal=causal)
    want, _ = triton_reference(q, k, v, causal=causal)
    assert_within_eager_error(out, want, eager_attention(q, k, v, causal=causal), what=f"out (D={head_dim}, {dtype})")
