"""L13 basic suite: the feature map, linear attention by its definition, the
recurrent form (a state of constant size that continues any prefix) and the
chunked form (every chunk size, never an L x L tensor), bad input, and the
Triton chunked kernel (marked `triton`: on CUDA, or on the CPU under
TRITON_INTERPRET=1) against the definition built here from einsum.

Run: ./course test L13    (or: pytest testcases/L13_linear_attention -m basic)
Expected values come from coursekit.reference.linear_attention_ref: the
(Lq, Lk) matrix of phi(q)·phi(k) built with einsum in float64, masked by
multiplication, normalised by its row sums plus eps.
"""
import pytest
import torch

from coursekit.reference import linear_attention_ref
from coursekit.testing import (assert_close, assert_never_materialises, assert_no_nan, assert_rejects,
                               assert_within_eager_error, randn)

CAUSAL_HINT = ("causal linear attention: query i sees keys j <= i + Lk - Lq (bottom-right); a hidden key "
               "gets weight 0 in BOTH the numerator and the denominator (multiply by the mask, do not add -inf)")
FEATURE_HINT = "phi(x) = elu(x) + 1 (positive everywhere): elu alone is negative below 0"
CURRENT_TOKEN_HINT = ("at step t the state must already include token t (S += phi(k_t) v_t^T before the output): "
                      "a query sees its own key")
CHUNK_HINT = ("inside a chunk the quadratic form must be causal INCLUDING the diagonal (tril, not tril(-1)); "
              "earlier chunks enter through the state, which is updated only AFTER the chunk's output; "
              "the last chunk may be shorter than chunk_size")


def qkv(batch=2, heads=3, length=13, head_dim=8, v_dim=None, *, k_len=None, seed=0, dtype=torch.float64):
    k_len = length if k_len is None else k_len
    q = randn(batch, heads, length, head_dim, seed=seed, dtype=dtype)
    k = randn(batch, heads, k_len, head_dim, seed=seed + 1, dtype=dtype)
    v = randn(batch, heads, k_len, v_dim or head_dim, seed=seed + 2, dtype=dtype)
    return q, k, v


def state_ref(k, v):
    """S = sum_j phi(k_j) v_j^T and z = sum_j phi(k_j), float64, from primitives."""
    fk = torch.where(k > 0, k + 1.0, torch.exp(k)).to(torch.float64)
    return torch.einsum("bhld,bhle->bhde", fk, v.to(torch.float64)), fk.sum(dim=2)


# ------------------------------------------------------------ feature map --

def test_elu_feature_map_is_elu_plus_one(impl):
    x = torch.linspace(-6, 6, 97, dtype=torch.float64)
    got = impl.linear_attention.elu_feature_map(x)
    assert_close(got, torch.where(x > 0, x + 1.0, torch.exp(x)), what="elu_feature_map(x)", hint=FEATURE_HINT)
    assert bool((got > 0).all()), "elu_feature_map must be positive everywhere: " + FEATURE_HINT


# ------------------------------------------------------------- definition --

DEFINITION_CASES = {
    # name: (length, k_len, causal)
    "causal_square": (11, None, True),
    "full_square": (11, None, False),
    "causal_queries_after_a_prefix": (4, 10, True),   # the last 4 positions of 10
    "full_rectangular": (5, 9, False),
    "one_token": (1, None, True),
}


@pytest.mark.parametrize("case", DEFINITION_CASES, ids=list(DEFINITION_CASES))
def test_definition_matches_the_reference(impl, case):
    length, k_len, causal = DEFINITION_CASES[case]
    q, k, v = qkv(length=length, k_len=k_len, v_dim=5)
    got = impl.linear_attention.linear_attention(q, k, v, causal=causal)
    assert_close(got, linear_attention_ref(q, k, v, causal=causal), what=f"linear_attention ({case})",
                 hint=CAUSAL_HINT + "; " + FEATURE_HINT)


def test_definition_uses_the_given_feature_map_and_eps(impl):
    # A feature map that changes the width (D -> 2D), and a large eps that visibly shrinks the output.
    def phi(x):
        return torch.cat([torch.relu(x), torch.relu(-x)], dim=-1) + 0.1
    q, k, v = qkv(length=9)
    got = impl.linear_attention.linear_attention(q, k, v, causal=True, feature_map=phi, eps=3.0)
    assert_close(got, linear_attention_ref(q, k, v, causal=True, feature_map=phi, eps=3.0),
                 what="linear_attention(feature_map=phi, eps=3.0)",
                 hint="apply feature_map to q and k (not elu); add eps to the denominator phi(q)·z only")


def test_output_dtype_and_shape(impl):
    q, k, v = qkv(length=6, v_dim=3, dtype=torch.float32)
    out = impl.linear_attention.linear_attention(q, k, v)
    assert out.shape == (2, 3, 6, 3) and out.dtype == torch.float32, (
        f"expected (B, H, Lq, Dv) = (2, 3, 6, 3) float32, got {tuple(out.shape)} {out.dtype}")


# -------------------------------------------------------------- recurrent --

def test_recurrent_matches_the_definition(impl):
    q, k, v = qkv(length=17, v_dim=6)
    out, (S, z) = impl.linear_attention.linear_attention_recurrent(q, k, v)
    assert_close(out, linear_attention_ref(q, k, v, causal=True), what="linear_attention_recurrent output",
                 hint=CURRENT_TOKEN_HINT)
    S_ref, z_ref = state_ref(k, v)
    assert_close(S, S_ref, what="state S = sum_j phi(k_j) v_j^T  (B, H, D, Dv)")
    assert_close(z, z_ref, what="state z = sum_j phi(k_j)  (B, H, D)")


@pytest.mark.parametrize("split", [1, 6, 12])
def test_recurrent_continues_from_a_state(impl, split):
    # Run the first `split` tokens, then the rest from the returned state:
    # the same outputs as one pass over all 13.
    q, k, v = qkv(length=13)
    la = impl.linear_attention
    first, state = la.linear_attention_recurrent(q[:, :, :split], k[:, :, :split], v[:, :, :split])
    second, _ = la.linear_attention_recurrent(q[:, :, split:], k[:, :, split:], v[:, :, split:], state=state)
    expected = linear_attention_ref(q, k, v, causal=True)
    assert_close(torch.cat([first, second], dim=2), expected,
                 what=f"recurrent over 13 tokens in two calls ({split} + {13 - split})",
                 hint="the second call must start from the given state (S, z), not from zeros")


def test_recurrent_continues_a_chunked_prefill(impl):
    # Prefill 20 tokens with the chunked form, decode 5 more one at a time from
    # the state of the prefix (built here from primitives): every output equals
    # the definition over all 25 tokens.
    q, k, v = qkv(length=25)
    la = impl.linear_attention
    prefill = la.linear_attention_chunked(q[:, :, :20], k[:, :, :20], v[:, :, :20], chunk_size=8)
    state = state_ref(k[:, :, :20], v[:, :, :20])
    decoded = []
    for t in range(20, 25):
        out, state = la.linear_attention_recurrent(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1],
                                                   state=state)
        decoded.append(out)
    assert_close(torch.cat([prefill, *decoded], dim=2), linear_attention_ref(q, k, v, causal=True),
                 what="chunked prefill (20) + recurrent decoding (5)",
                 hint="the state after a prefix is (sum phi(k) v^T, sum phi(k)); decoding adds one token per step")


def test_recurrent_does_not_modify_the_given_state(impl):
    q, k, v = qkv(length=4)
    S, z = state_ref(k, v)
    S0, z0 = S.clone(), z.clone()
    impl.linear_attention.linear_attention_recurrent(q, k, v, state=(S, z))
    assert torch.equal(S, S0) and torch.equal(z, z0), (
        "linear_attention_recurrent changed the state it was given in place; return a new state instead "
        "(S = S + ..., not S += ...): the caller may still need the old one (a fork, a retry)")


def test_state_size_does_not_grow_with_length(impl):
    la = impl.linear_attention
    sizes = {}
    for length in (3, 40):
        q, k, v = qkv(length=length, v_dim=5, dtype=torch.float32)
        _, (S, z) = la.linear_attention_recurrent(q, k, v)
        sizes[length] = (tuple(S.shape), tuple(z.shape))
    assert sizes[3] == sizes[40] == ((2, 3, 8, 5), (2, 3, 8)), (
        f"the state must be S (B, H, D, Dv) and z (B, H, D) whatever the length; got {sizes}")


# ---------------------------------------------------------------- chunked --

@pytest.mark.parametrize("chunk_size", [1, 3, 4, 7, 16, 30, 64])
def test_chunked_matches_the_definition(impl, chunk_size):
    # L = 16 is divided by 1, 4 and 16, not by 3, 7 or 30; 30 and 64 exceed it.
    q, k, v = qkv(length=16, v_dim=5, seed=3)
    got = impl.linear_attention.linear_attention_chunked(q, k, v, chunk_size=chunk_size)
    assert_close(got, linear_attention_ref(q, k, v, causal=True), what=f"linear_attention_chunked(chunk_size={chunk_size})",
                 hint=CHUNK_HINT)


def test_chunked_never_builds_an_l_by_l_matrix(impl):
    B, H, L, D = 1, 2, 256, 8
    q, k, v = qkv(batch=B, heads=H, length=L, head_dim=D, dtype=torch.float32)
    out = assert_never_materialises(
        lambda: impl.linear_attention.linear_attention_chunked(q, k, v, chunk_size=16),
        B * H * L * L // 4, what=f"an L x L = {L} x {L} weight matrix (per head)",
        hint="within a chunk build only a (C, C) matrix; earlier chunks enter through the state")
    assert_close(out, linear_attention_ref(q, k, v, causal=True), dtype=torch.float32, what="chunked output")


def test_tiny_queries_stay_finite(impl):
    # phi(q) = exp(q) underflows to 0 for q = -200: the denominator is then eps alone.
    q, k, v = qkv(length=6)
    q = torch.full_like(q, -800.0)
    la = impl.linear_attention
    for name, out in (("linear_attention", la.linear_attention(q, k, v)),
                      ("linear_attention_chunked", la.linear_attention_chunked(q, k, v, chunk_size=4)),
                      ("linear_attention_recurrent", la.linear_attention_recurrent(q, k, v)[0])):
        assert_no_nan(out, what=f"{name} with phi(q) = 0",
                      hint="add eps to the denominator: phi(q)·z + eps, so 0 / 0 never happens")


# -------------------------------------------------------------- bad input --

def test_rejects_bad_input(impl):
    la = impl.linear_attention
    q, k, v = qkv(length=5)
    assert_rejects(lambda: la.linear_attention(q[0], k[0], v[0]), "q", "k", "v", "4-D")
    assert_rejects(lambda: la.linear_attention(q, k[..., :4], v), "q", "k", "head_dim")
    assert_rejects(lambda: la.linear_attention(q, k, v[:, :, :3]), "v", "k")
    assert_rejects(lambda: la.linear_attention(q, k, v, causal="yes"), "causal")
    assert_rejects(lambda: la.linear_attention(q, k, v, eps=-1.0), "eps")
    assert_rejects(lambda: la.linear_attention_chunked(q, k, v, chunk_size=0), "chunk_size")
    assert_rejects(lambda: la.linear_attention_chunked(q[:, :, :3], k, v), "q", "k", "length")
    S, z = state_ref(k, v)
    assert_rejects(lambda: la.linear_attention_recurrent(q, k, v, state=(S[..., :2], z)), "state", "S")
    assert_rejects(lambda: la.linear_attention_recurrent(q, k, v, state=S), "state")


# ------------------------------------------------ Triton chunked kernel --
# Under TRITON_INTERPRET=1 on the CPU (the course's CI) or on CUDA; small shapes:
# the interpreter runs every program in Python. The expected values are the O(L^2)
# definition, built here from torch primitives in float64.

TRITON_HINT = ("per chunk: out = [tril(phi(Q_c) phi(K_c)^T) V_c + phi(Q_c) S] / [row sums of the same tril + "
               "phi(Q_c)·z + eps]; the tril keeps its diagonal (a query sees its own key), the state (S, z) "
               "holds EVERY earlier chunk (carried across iterations, never reset) and takes this chunk only "
               "AFTER its output; padded rows and columns must get phi = 0, not phi(0) = 1")


def phi_ref(x):
    """elu(x) + 1 from primitives, float64."""
    x = x.to(torch.float64)
    return torch.where(x > 0, x + 1.0, torch.exp(x))


def causal_definition(q, k, v, eps=1e-6):
    """Causal linear attention by its definition: the (L, L) matrix of phi(q_i)·phi(k_j), lower
    triangle with the diagonal, normalised by its row sums plus eps. float64."""
    weights = torch.einsum("bhid,bhjd->bhij", phi_ref(q), phi_ref(k)).tril()  # (B, H, L, L), j <= i
    return torch.einsum("bhij,bhje->bhie", weights, v.to(torch.float64)) / (weights.sum(-1, keepdim=True) + eps)


def triton_qkv(batch=2, heads=2, length=37, head_dim=16, *, seed=20, dtype=torch.float32, device="cpu"):
    q = randn(batch, heads, length, head_dim, seed=seed, dtype=dtype, device=device)
    k = randn(batch, heads, length, head_dim, seed=seed + 1, dtype=dtype, device=device)
    v = randn(batch, heads, length, head_dim, seed=seed + 2, dtype=dtype, device=device)
    return q, k, v


@pytest.mark.triton
@pytest.mark.parametrize("length, chunk_size", [(37, 16), (37, 32), (64, 16), (50, 64), (9, 16)],
                         ids=["37_by_16", "37_by_32", "64_by_16", "50_by_64", "9_by_16"])
def test_triton_matches_the_definition(impl, triton_device, length, chunk_size):
    # 37 and 50 are no multiple of the chunk: the last chunk is partial; 64 / 16 is four whole
    # chunks, 9 < 16 one partial chunk; 50 by 64 a single chunk (no state at all).
    q, k, v = triton_qkv(length=length, device=triton_device)
    out = impl.linear_attention_triton.triton_linear_attention_chunked(q, k, v, chunk_size=chunk_size)
    assert out.shape == q.shape and out.dtype == q.dtype, (
        f"expected (B, H, L, D) = {tuple(q.shape)} in {q.dtype}, got {tuple(out.shape)} {out.dtype}")
    assert_close(out, causal_definition(q.cpu(), k.cpu(), v.cpu()), dtype=torch.float32,
                 what=f"triton_linear_attention_chunked (L = {length}, chunk_size = {chunk_size})", hint=TRITON_HINT)


@pytest.mark.triton
def test_triton_no_future_key_leaks_in(impl, triton_device):
    # Change every key and value after position 20 (inside the second chunk of 16): the
    # outputs at positions 0..20 must not move, in either chunk.
    q, k, v = triton_qkv(length=40, seed=21, device=triton_device)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 21:] += 3.0
    v2[:, :, 21:] *= -2.0
    f = impl.linear_attention_triton.triton_linear_attention_chunked
    before, after = f(q, k, v, chunk_size=16), f(q, k2, v2, chunk_size=16)
    assert_close(after[:, :, :21], before[:, :, :21], what="outputs 0..20 after changing keys/values 21..39",
                 hint="causal: query i sees keys j <= i only. The intra-chunk block must be masked, and the state "
                      "must take the chunk only after the chunk's outputs are computed")


@pytest.mark.triton
@pytest.mark.parametrize("head_dim, block_dv", [(12, None), (32, 16)], ids=["odd_head_dim_12", "two_value_blocks"])
def test_triton_padding_and_value_blocks(impl, triton_device, head_dim, block_dv):
    # D = 12 is padded to a 16-wide tile (the padding must add nothing); D = 32 in value blocks of 16
    # runs two programs per head, each with its own columns of V, S and out.
    q, k, v = triton_qkv(length=29, head_dim=head_dim, seed=22, device=triton_device)
    out = impl.linear_attention_triton.triton_linear_attention_chunked(q, k, v, chunk_size=16, block_dv=block_dv)
    assert_close(out, causal_definition(q.cpu(), k.cpu(), v.cpu()), dtype=torch.float32,
                 what=f"triton_linear_attention_chunked (D = {head_dim}, block_dv = {block_dv})", hint=TRITON_HINT)


@pytest.mark.triton
def test_triton_strided_inputs_and_eps(impl, triton_device):
    # (B, L, H, D) projections viewed as (B, H, L, D): strided, not contiguous; a large eps shows in the output.
    B, L, H, D = 2, 21, 3, 16
    q, k, v = (randn(B, L, H, D, seed=23 + i, device=triton_device).transpose(1, 2) for i in range(3))
    out = impl.linear_attention_triton.triton_linear_attention_chunked(q, k, v, chunk_size=16, eps=5.0)
    assert_close(out, causal_definition(q.cpu(), k.cpu(), v.cpu(), eps=5.0), dtype=torch.float32,
                 what="triton_linear_attention_chunked on transposed (B, L, H, D) views, eps = 5",
                 hint="read q, k, v through their strides; eps is added once, to phi(q)·z + the row sums")


@pytest.mark.triton
def test_triton_float16_within_eager_error(impl, triton_device):
    # float16 inputs: phi, sums and state in float32, the output float16. The yardstick is eager float16
    # PyTorch (every op rounded to float16), judged against the float64 definition.
    q, k, v = triton_qkv(length=45, seed=24, dtype=torch.float16, device=triton_device)
    out = impl.linear_attention_triton.triton_linear_attention_chunked(q, k, v, chunk_size=16)
    assert out.dtype == torch.float16, f"float16 in, {out.dtype} out (the output keeps the input dtype)"
    q, k, v = q.cpu(), k.cpu(), v.cpu()
    fq, fk = torch.nn.functional.elu(q.float()).half() + 1, torch.nn.functional.elu(k.float()).half() + 1
    weights = (fq.float() @ fk.float().transpose(-2, -1)).half().tril()          # (B, H, L, L) in float16
    eager = ((weights.float() @ v.float()).half().float()
             / (weights.float().sum(-1, keepdim=True).half().float() + 1e-6)).half()
    assert_within_eager_error(out, causal_definition(q, k, v), eager, what="triton float16 output",
                              hint="keep phi, the products' accumulators, the sums and the state in float32")


@pytest.mark.triton
def test_triton_one_token_and_zero_sizes(impl, triton_device):
    f = impl.linear_attention_triton.triton_linear_attention_chunked
    # one token sees only itself: out_0 = w v_0 / (w + eps) with w = phi(q_0)·phi(k_0) > 0, i.e. ~v_0
    q, k, v = triton_qkv(length=1, seed=25, device=triton_device)
    assert_close(f(q, k, v), causal_definition(q.cpu(), k.cpu(), v.cpu()), dtype=torch.float32,
                 what="one token (its own value, up to eps)", hint=TRITON_HINT)
    for shape in ((2, 2, 0, 16), (0, 2, 5, 16)):
        q = torch.zeros(shape, device=triton_device)
        out = f(q, q.clone(), q.clone())
        assert out.shape == shape, f"a zero-size input {shape} gives an empty output of that shape, got {tuple(out.shape)}"


@pytest.mark.triton
def test_triton_rejects_bad_input(impl, triton_device):
    f = impl.linear_attention_triton.triton_linear_attention_chunked
    q, k, v = triton_qkv(length=8, device=triton_device)
    assert_close(f(q, k, v, chunk_size=16), causal_definition(q.cpu(), k.cpu(), v.cpu()), dtype=torch.float32,
                 what="the valid call", hint=TRITON_HINT)  # a valid call first
    assert_rejects(lambda: f(q, k, v[..., :8]), "v", "Dv", "head_dim")
    assert_rejects(lambda: f(q, k[:, :, :5], v[:, :, :5]), "q", "k", "length")
    assert_rejects(lambda: f(q[0], k[0], v[0]), "q", "4-D")
    assert_rejects(lambda: f(q, k, v, chunk_size=0), "chunk_size")
    assert_rejects(lambda: f(q, k, v, eps=-1.0), "eps")
    assert_rejects(lambda: f(q.double(), k.double(), v.double()), "q", "dtype")
    assert_rejects(lambda: f(q, k.half(), v), "k", "dtype")
