"""L13 basic suite: the feature map, linear attention by its definition, the
recurrent form (a state of constant size that continues any prefix) and the
chunked form (every chunk size, never an L x L tensor), and bad input.

Run: ./course test L13    (or: pytest testcases/L13_linear_attention -m basic)
Expected values come from coursekit.reference.linear_attention_ref: the
(Lq, Lk) matrix of phi(q)·phi(k) built with einsum in float64, masked by
multiplication, normalised by its row sums plus eps.
"""
import pytest
import torch

from coursekit.reference import linear_attention_ref
from coursekit.testing import assert_close, assert_never_materialises, assert_no_nan, assert_rejects, randn

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
