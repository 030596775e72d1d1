"""L13 advanced suite: float32 and half precision (statistics in float32,
output in the input dtype), gradients of every form against autograd through
the float64 definition, and the decayed recurrent form (decay 1 is the plain
one; a per-head decay weighs token j by decay^(t - j)), and the Triton kernel's
gradients (interpreter or CUDA) and its GPU runs at real sizes (marked `gpu`).

Run: ./course test L13 --advanced
"""
import pytest
import torch

from coursekit.reference import linear_attention_ref
from coursekit.testing import assert_close, assert_rejects, assert_within_eager_error, randn

HALF_HINT = ("half-precision inputs: compute phi, the products, the sums and the state in float32 and cast "
             "only the output back; a bfloat16 state loses the small terms once it has summed many tokens")
DECAY_HINT = ("S_t = decay * S_{t-1} + phi(k_t) v_t^T (and z alike): fade the old state, THEN add the new "
              "token, so token j weighs decay^(t - j) and the current token weighs 1")


def qkv(length=24, head_dim=8, v_dim=None, *, seed=0, dtype=torch.float64, scale=1.0):
    shape = (2, 3, length, head_dim)
    q, k = randn(*shape, seed=seed, dtype=dtype, scale=scale), randn(*shape, seed=seed + 1, dtype=dtype, scale=scale)
    v = randn(2, 3, length, v_dim or head_dim, seed=seed + 2, dtype=dtype)
    return q, k, v


def run(impl, form, q, k, v):
    la = impl.linear_attention
    if form == "definition":
        return la.linear_attention(q, k, v, causal=True)
    if form == "chunked":
        return la.linear_attention_chunked(q, k, v, chunk_size=5)
    return la.linear_attention_recurrent(q, k, v)[0]


FORMS = ["definition", "chunked", "recurrent"]


@pytest.mark.parametrize("form", FORMS)
def test_float32_matches_the_float64_definition(impl, form):
    q, k, v = qkv(length=40, dtype=torch.float32, seed=4)
    out = run(impl, form, q, k, v)
    assert out.dtype == torch.float32, f"{form}: float32 in, {out.dtype} out"
    assert_close(out, linear_attention_ref(q, k, v, causal=True), what=f"{form} (float32)")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("form", FORMS)
def test_half_precision_within_eager_error(impl, form, dtype):
    # 300 tokens whose values share an offset (as real value vectors do): the
    # state sums 300 outer products and grows large, and a half-precision
    # running sum then drops most of each new term (at |S| ~ 600 the bfloat16
    # spacing is 4).
    q, k, _ = qkv(length=300, dtype=dtype, seed=5, scale=0.5)
    v = (randn(2, 3, 300, 8, seed=7) + 2.0).to(dtype)
    out = run(impl, form, q, k, v)
    assert out.dtype == dtype, f"{form}: {dtype} in, {out.dtype} out (the output keeps the input dtype)"
    expected = linear_attention_ref(q, k, v, causal=True)
    eager = linear_attention_ref(q, k, v, causal=True).to(dtype)  # the exact answer, rounded once to dtype
    assert_within_eager_error(out, expected, eager, what=f"{form} ({dtype})", hint=HALF_HINT)


@pytest.mark.parametrize("form", FORMS)
def test_gradients_match_autograd_of_the_definition(impl, form):
    q, k, v = qkv(length=11, v_dim=4, seed=6)
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    grad_out = randn(2, 3, 11, 4, seed=9, dtype=torch.float64)
    run(impl, form, q, k, v).backward(grad_out)
    got = [t.grad for t in (q, k, v)]
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    # linear_attention_ref detaches its inputs: the same definition, from primitives, with a graph.
    fq = torch.where(q2 > 0, q2 + 1.0, torch.exp(q2))
    fk = torch.where(k2 > 0, k2 + 1.0, torch.exp(k2))
    weights = torch.einsum("bhqd,bhkd->bhqk", fq, fk) * torch.ones(11, 11, dtype=torch.float64).tril()
    out = torch.einsum("bhqk,bhkd->bhqd", weights, v2) / (weights.sum(-1, keepdim=True) + 1e-6)
    expected = torch.autograd.grad(out, (q2, k2, v2), grad_out)
    for name, g, e in zip(("dq", "dk", "dv"), got, expected):
        assert g is not None, f"{form}: no gradient reached {name[1]}; keep the computation differentiable"
        assert_close(g, e, what=f"{form}: {name}",
                     hint="the forms are ordinary tensor code: autograd differentiates them if nothing is detached "
                          "or written in place into a tensor that autograd still needs")


# ------------------------------------------------------------------ decay --

def test_decay_one_is_plain_linear_attention(impl):
    q, k, v = qkv(length=15, seed=7)
    la = impl.linear_attention
    out, (S, z) = la.decayed_linear_attention_recurrent(q, k, v, 1.0)
    plain, (S_plain, z_plain) = la.linear_attention_recurrent(q, k, v)
    assert_close(out, plain, what="decayed_linear_attention_recurrent(decay=1.0) vs linear_attention_recurrent")
    assert_close(S, S_plain, what="state S with decay 1.0")
    assert_close(z, z_plain, what="state z with decay 1.0")


@pytest.mark.parametrize("decay", [0.9, "per_head"])
def test_decay_weighs_token_j_by_decay_to_the_distance(impl, decay):
    q, k, v = qkv(length=20, seed=8)
    if decay == "per_head":
        decay = torch.tensor([0.5, 0.8, 0.99], dtype=torch.float64)
    out, _ = impl.linear_attention.decayed_linear_attention_recurrent(q, k, v, decay)
    assert_close(out, linear_attention_ref(q, k, v, causal=True, decay=decay),
                 what=f"decayed_linear_attention_recurrent(decay={decay})", hint=DECAY_HINT)


def test_decayed_state_continues(impl):
    q, k, v = qkv(length=12, seed=10)
    la = impl.linear_attention
    first, state = la.decayed_linear_attention_recurrent(q[:, :, :7], k[:, :, :7], v[:, :, :7], 0.7)
    second, _ = la.decayed_linear_attention_recurrent(q[:, :, 7:], k[:, :, 7:], v[:, :, 7:], 0.7, state=state)
    assert_close(torch.cat([first, second], dim=2), linear_attention_ref(q, k, v, causal=True, decay=0.7),
                 what="decayed recurrent in two calls (7 + 5)", hint=DECAY_HINT)


def test_decay_rejects_bad_values(impl):
    q, k, v = qkv(length=4)
    la = impl.linear_attention
    assert_rejects(lambda: la.decayed_linear_attention_recurrent(q, k, v, 0.0), "decay")
    assert_rejects(lambda: la.decayed_linear_attention_recurrent(q, k, v, 1.5), "decay")
    assert_rejects(lambda: la.decayed_linear_attention_recurrent(q, k, v, torch.ones(2)), "decay")


# ----------------------------------------------- Triton kernel, backward --
# Under TRITON_INTERPRET=1 on the CPU or on CUDA: the gradients of the kernel (float32) against
# autograd through the float64 definition built from primitives.

def definition_with_graph(q, k, v, eps=1e-6):
    fq = torch.where(q > 0, q + 1.0, torch.exp(q))
    fk = torch.where(k > 0, k + 1.0, torch.exp(k))
    weights = torch.einsum("bhid,bhjd->bhij", fq, fk).tril()                 # (B, H, L, L), j <= i
    return torch.einsum("bhij,bhje->bhie", weights, v) / (weights.sum(-1, keepdim=True) + eps)


def triton_gradients_vs_autograd(impl, length, head_dim, chunk_size, device, seed):
    shape = (2, 2, length, head_dim)
    q, k, v = (randn(*shape, seed=seed + i, dtype=torch.float64, device=device, requires_grad=True) for i in range(3))
    grad_out = randn(*shape, seed=seed + 3, dtype=torch.float64, device=device)
    expected = torch.autograd.grad(definition_with_graph(q, k, v), (q, k, v), grad_out)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    out = impl.linear_attention_triton.triton_linear_attention_chunked(q32, k32, v32, chunk_size=chunk_size)
    out.backward(grad_out.float())
    for name, t, e in zip(("dq", "dk", "dv"), (q32, k32, v32), expected):
        assert t.grad is not None, f"no gradient reached {name[1]}: the kernel's output must be differentiable"
        assert_close(t.grad, e, dtype=torch.float32,
                     what=f"triton {name} (L = {length}, D = {head_dim}, chunk {chunk_size})",
                     hint="dq scans forward with (S, z); dk and dv scan BACKWARD with R = sum_{i>=j} phi(q_i) "
                          "dnum_i^T and r = sum_{i>=j} phi(q_i) dden_i, dnum = dO / den, dden = -(dO·out) / den; "
                          "the chain rule through phi: 1 for x > 0, exp(x) below")


@pytest.mark.triton
@pytest.mark.parametrize("length, head_dim, chunk_size", [(37, 16, 16), (50, 12, 32)],
                         ids=["37_by_16", "50_by_32_head_dim_12"])
def test_triton_gradients_match_autograd_of_the_definition(impl, triton_device, length, head_dim, chunk_size):
    triton_gradients_vs_autograd(impl, length, head_dim, chunk_size, triton_device, seed=30)


# ------------------------------------- Triton chunked kernel, on a CUDA GPU --
# Real sizes: D = 64 and 128, thousands of tokens, every chunk size, half precision.
# The expected values are the O(L^2) definition from torch primitives in float64 (on the GPU).

def causal_definition(q, k, v, eps=1e-6):
    """The (L, L) matrix of phi(q_i)·phi(k_j), j <= i, normalised by its row sums plus eps; float64."""
    fq, fk = (torch.where(x > 0, x + 1.0, torch.exp(x)) for x in (q.double(), k.double()))
    weights = torch.einsum("bhid,bhjd->bhij", fq, fk).tril()               # (B, H, L, L)
    return torch.einsum("bhij,bhje->bhie", weights, v.double()) / (weights.sum(-1, keepdim=True) + eps)


def gpu_qkv(length, head_dim, *, heads=4, seed=40, dtype=torch.float32, scale=1.0, offset=0.0):
    q = randn(1, heads, length, head_dim, seed=seed, dtype=dtype, device="cuda", scale=scale)
    k = randn(1, heads, length, head_dim, seed=seed + 1, dtype=dtype, device="cuda", scale=scale)
    v = (randn(1, heads, length, head_dim, seed=seed + 2, device="cuda") + offset).to(dtype)
    return q, k, v


GPU_HINT = ("on the GPU the kernel runs 16..128-token chunks with one program per (batch, head, value block): "
            "each block must carry its own columns of S across every chunk and use the whole phi(q)·z")


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("chunk_size, head_dim, block_dv",
                         [(16, 64, None), (32, 64, None), (64, 64, None), (128, 64, None), (64, 128, None),
                          (128, 128, None), (64, 64, 64)],
                         ids=["c16_d64", "c32_d64", "c64_d64", "c128_d64", "c64_d128", "c128_d128", "c64_d64_one_block"])
def test_triton_gpu_float32_matches_the_definition(impl, chunk_size, head_dim, block_dv):
    q, k, v = gpu_qkv(2053, head_dim)  # 2053 = a prime: the last chunk is partial for every chunk size
    out = impl.linear_attention_triton.triton_linear_attention_chunked(q, k, v, chunk_size=chunk_size,
                                                                        block_dv=block_dv)
    assert_close(out, causal_definition(q, k, v), dtype=torch.float32,
                 what=f"triton float32, L = 2053, D = {head_dim}, chunk {chunk_size}, block_dv {block_dv}",
                 hint=GPU_HINT)


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_triton_gpu_half_precision_within_eager_error(impl, dtype, head_dim):
    # 12289 tokens whose values share an offset of 2 (as real value vectors do): S and z grow with L
    # (|z| ~ L), far past float16's 65504 if they were kept in half precision. The yardstick is the
    # exact answer rounded once to dtype, the strictest eager error there is.
    q, k, v = gpu_qkv(12289, head_dim, heads=2, seed=41, dtype=dtype, scale=0.5, offset=2.0)
    out = impl.linear_attention_triton.triton_linear_attention_chunked(q, k, v)
    assert out.dtype == dtype, f"{dtype} in, {out.dtype} out (the output keeps the input dtype)"
    expected = causal_definition(q, k, v)
    assert_within_eager_error(out, expected, expected.to(dtype), what=f"triton {dtype}, L = 12289, D = {head_dim}",
                              hint=HALF_HINT)


@pytest.mark.gpu
@pytest.mark.triton
def test_triton_gpu_gradients_match_autograd_of_the_definition(impl):
    # D = 64 only: the float32 backward at D = 128 compiles for about a minute (IEEE products of
    # 128-wide tiles), longer than a graded test may take; D = 128 is the forward tests' size.
    triton_gradients_vs_autograd(impl, 1029, 64, 64, "cuda", seed=50)
