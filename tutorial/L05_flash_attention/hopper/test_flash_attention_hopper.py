"""Tests for the L05 appendix's Hopper fast path (flash_attention_hopper.py).

On a CUDA machine they run on the GPU; without one, on CPU tensors under
TRITON_INTERPRET=1 (the course's pytest plugin sets it), which runs each
program in Python: the shapes stay at one or two 128-row tiles there. Every
switch of `Steps` is exercised, so CI runs the same kernel bodies the H200
runs. Expected values come from float64 torch primitives; the half-precision
bound is the course's rule (coursekit.testing.assert_within_eager_error):
no further from float64 than twice what eager PyTorch in the same dtype is.

    pytest tutorial/L05_flash_attention/hopper -q
"""
import os

import pytest
import torch

from coursekit.reference import attention_lse_ref
from coursekit.testing import assert_close, assert_rejects, assert_within_eager_error, randn

pytestmark = pytest.mark.triton

ON_GPU = torch.cuda.is_available()
OFF = dict(exp2=False, split_diagonal=False, tma=False, persistent=False, warp_specialize=False)
# The ablation's rungs, and each step alone: a bug behind any switch fails a test.
STEP_SETS = {
    "fast": {},
    "all_off": OFF,
    "exp2_only": {**OFF, "exp2": True},
    "split_only": {**OFF, "split_diagonal": True},
    "tma_only": {**OFF, "tma": True},
    "persistent_only": {**OFF, "persistent": True},
    "atomic_dq": {"atomic_dq": True},
    "atomic_dq_pointers": {**OFF, "atomic_dq": True},
    "overlap": {"overlap": True},
    "overlap_pointers": {**OFF, "overlap": True, "split_diagonal": True},
    "warp_specialize": {"warp_specialize": True},
}


@pytest.fixture(scope="module")
def fah():
    from tutorial.L05_flash_attention.hopper import flash_attention_hopper
    return flash_attention_hopper


def steps_of(fah, name):
    if name == "warp_specialize" and ON_GPU and os.environ.get("HOPPER_TEST_WARP_SPEC") != "1":
        pytest.skip("warp specialisation on sm_90 is timed by the benchmark, not required to compile "
                    "(set HOPPER_TEST_WARP_SPEC=1 to test it on this GPU)")
    return fah.Steps(**STEP_SETS[name])


def inputs(L, *, heads=2, kv_heads=1, head_dim=64, batch=1, dtype=torch.float16, device="cpu", seed=0):
    q = randn(batch, heads, L, head_dim, seed=seed, dtype=dtype, device=device, requires_grad=True)
    k = randn(batch, kv_heads, L, head_dim, seed=seed + 1, dtype=dtype, device=device, requires_grad=True)
    v = randn(batch, kv_heads, L, head_dim, seed=seed + 2, dtype=dtype, device=device, requires_grad=True)
    return q, k, v


def reference(q, k, v, causal, scale=None):
    """float64 (out, lse); GQA by the course's mapping (query head h reads kv head h // group)."""
    group = q.shape[1] // k.shape[1]
    f64 = [x.detach().double().requires_grad_() for x in (q, k, v)]
    out, lse = attention_lse_ref(f64[0], f64[1].repeat_interleave(group, 1), f64[2].repeat_interleave(group, 1),
                                 causal=causal, scale=scale)
    return out, lse, f64


def eager(q, k, v, causal, scale=None):
    """Plain PyTorch in q's dtype: the yardstick for half-precision error."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = (q @ k.transpose(-2, -1)) * (scale or q.shape[-1] ** -0.5)   # (B, H, L, D) @ (B, H, D, L)
    if causal:
        L = q.shape[-2]
        hidden = torch.ones(L, L, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(hidden, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def check_forward_backward(fah, q, k, v, causal, steps, scale=None, label=""):
    out = fah.hopper_flash_attention(q, k, v, causal=causal, scale=scale, steps=steps)
    grad_out = randn(*out.shape, seed=7, dtype=out.dtype, device=out.device)
    got = torch.autograd.grad(out, (q, k, v), grad_out)
    want, _, f64 = reference(q, k, v, causal, scale)
    want_g = torch.autograd.grad(want, f64, grad_out.double())
    e = eager(q, k, v, causal, scale)
    eager_g = torch.autograd.grad(e, (q, k, v), grad_out)
    hint = ("the causal mask is j <= i inside the diagonal tiles only; the tiles left of it need none"
            if causal else "every key tile is visited, none masked")
    assert_within_eager_error(out, want, e, what=f"out {label}", hint=hint)
    for name, g, w, ge in zip("qkv", got, want_g, eager_g):
        assert_within_eager_error(g, w, ge, what=f"d{name} {label}",
                                  hint="backward: P = exp2(qk * scale * log2e - lse * log2e), dS = P * (dP - delta)")


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("step_set", list(STEP_SETS))
def test_every_step_matches_reference(fah, triton_device, step_set, causal):
    """Each switch of Steps (the ablation's rungs) gives the same attention, forward and backward.
    Two query tiles per head, so the persistent schedule pairs tiles and the causal diagonal is crossed."""
    steps = steps_of(fah, step_set)
    q, k, v = inputs(256, heads=2, kv_heads=1, device=triton_device)
    check_forward_backward(fah, q, k, v, causal, steps, label=f"(steps {step_set}, causal={causal})")


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_head_dim_128_and_gqa_groups(fah, triton_device, causal):
    """D = 128, three tiles per head (an odd count: the middle causal tile runs alone), 4 query heads on 2 kv heads."""
    q, k, v = inputs(384, heads=4, kv_heads=2, head_dim=128, device=triton_device, seed=3)
    check_forward_backward(fah, q, k, v, causal, None, label=f"(D=128 defaults, GQA 4/2, causal={causal})")
    check_forward_backward(fah, q, k, v, causal, fah.FAST, label=f"(D=128 FAST, GQA 4/2, causal={causal})")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_forward_returns_out_and_natural_log_lse(fah, triton_device, dtype):
    if triton_device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("numpy has no bfloat16: the interpreter runs float16 only")
    q, k, v = inputs(256, heads=2, kv_heads=2, device=triton_device, dtype=dtype, seed=5)
    out, lse = fah.hopper_flash_attention_forward(q, k, v, causal=True, scale=0.3)
    want, want_lse, _ = reference(q, k, v, True, scale=0.3)
    assert lse.dtype == torch.float32 and lse.shape == (1, 2, 256), f"lse: {lse.dtype} {tuple(lse.shape)}"
    assert_within_eager_error(out, want, eager(q, k, v, True, scale=0.3), what="out with scale=0.3")
    assert_close(lse.double(), want_lse, atol=2e-3, rtol=1e-4,
                 hint="lse is the natural log: (m + log2(l)) * ln 2 when m is in base 2")


@pytest.mark.skipif(not ON_GPU, reason="realistic shapes need a GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_gpu_realistic_shapes(fah, dtype, head_dim, causal):
    q, k, v = inputs(1024, batch=2, heads=4, kv_heads=2, head_dim=head_dim, dtype=dtype, device="cuda", seed=11)
    check_forward_backward(fah, q, k, v, causal, None, label=f"(L=1024, D={head_dim}, {dtype})")


@pytest.mark.parametrize("case", ["head_dim", "length", "cross", "dtype"])
def test_outside_the_subset_raises_or_falls_back(fah, triton_device, case):
    """Shapes the fast path does not take: a ValueError naming the argument, or the fallback's answer."""
    L, D, Lk, dtype = 128, 64, 128, torch.float16
    if case == "head_dim":
        D = 32
    elif case == "length":
        L = Lk = 100
    elif case == "cross":
        Lk = 256
    else:
        dtype = torch.float32
    q = randn(1, 2, L, D, dtype=dtype, device=triton_device)
    k = randn(1, 2, Lk, D, seed=1, dtype=dtype, device=triton_device)
    v = randn(1, 2, Lk, D, seed=2, dtype=dtype, device=triton_device)
    assert_rejects(lambda: fah.hopper_flash_attention(q, k, v), "q", "k")
    assert_rejects(lambda: fah.hopper_flash_attention_forward(q, k, v), "q", "k")
    calls = []

    def fallback(q, k, v, causal=False, scale=None):
        calls.append((causal, scale))
        return torch.zeros_like(q)
    out = fah.hopper_flash_attention(q, k, v, causal=True, scale=0.5, fallback=fallback)
    assert calls == [(True, 0.5)], f"the fallback should be called once with causal and scale, got {calls}"
    assert out.shape == q.shape


def test_bad_input_names_the_argument(fah, triton_device):
    q, k, v = inputs(128, device=triton_device)
    assert_rejects(lambda: fah.hopper_flash_attention(q, k, v, causal="yes"), "causal")
    assert_rejects(lambda: fah.hopper_flash_attention(q, k, v, causal=1), "causal")
    assert_rejects(lambda: fah.hopper_flash_attention(q[0], k, v), "q")
    assert_rejects(lambda: fah.hopper_flash_attention(q, k, v, scale=-1.0), "scale")
    assert_rejects(lambda: fah.hopper_flash_attention(q, k.repeat(1, 3, 1, 1)[:, :3], v), "k", "heads")
    assert_rejects(lambda: fah.hopper_flash_attention(q, k, v.half()[..., :32]), "v")
    # malformed input is rejected even with a fallback: only valid shapes outside the subset fall back
    assert_rejects(lambda: fah.hopper_flash_attention(q, k, v, causal=None, fallback=lambda *a, **kw: None),
                   "causal")


@pytest.mark.parametrize("shape", [(0, 2, 128, 64), (1, 2, 0, 64)], ids=["no_batch", "no_tokens"])
def test_zero_sizes_give_empty_results(fah, triton_device, shape):
    q = torch.zeros(shape, dtype=torch.float16, device=triton_device, requires_grad=True)
    k = torch.zeros(shape[0], 1, shape[2], shape[3], dtype=torch.float16, device=triton_device, requires_grad=True)
    v = torch.zeros_like(k, requires_grad=True)
    out = fah.hopper_flash_attention(q, k, v, causal=True)
    assert out.shape == shape
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.zeros_like(out))
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
    _, lse = fah.hopper_flash_attention_forward(q, k, v)
    assert lse.shape == shape[:3]


def test_tile_table_covers_the_subset(fah):
    """Every (kernel, D, causal) has a tile, and the tiles fit the kernels' rules."""
    for D in fah.HEAD_DIMS:
        for causal in (False, True):
            names = ("fwd", "fwd_overlap", "dkdv", "dq", "dkdv_atomic")
            fwd, fwd_overlap, dkdv, dq, dkdv_atomic = (fah.TILES[(name, D, causal)] for name in names)
            for name, t in zip(names, (fwd, fwd_overlap, dkdv, dq, dkdv_atomic)):
                assert fah.SEQ_MULTIPLE % t.block_m == 0 and fah.SEQ_MULTIPLE % t.block_n == 0, (name, D, t)
            for t in (dkdv, dkdv_atomic):
                assert t.block_n % t.block_m == 0, f"dkdv {t}: the masked diagonal needs BLOCK_N % BLOCK_M == 0"
            assert dq.block_m % dq.block_n == 0, f"dq {dq}: the masked diagonal needs BLOCK_M % BLOCK_N == 0"
            for t in (fwd, fwd_overlap):
                assert t.block_m % t.block_n == 0, f"fwd {t}: the causal split needs BLOCK_M % BLOCK_N == 0"
