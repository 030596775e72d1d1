"""L06 basic suite: repeat_kv and its head mapping, grouped-query attention
against F.scaled_dot_product_attention(enable_gqa=True) and a per-head loop,
the MHA (Hkv = H) and MQA (Hkv = 1) ends, cached decoding with L04's KVCache,
key padding, MHA -> GQA conversion by mean-pooling, the cache-size formula,
and head counts that must be rejected.

Run: ./course test L06    (or: pytest testcases/L06_gqa -m basic)
Expected values come from torch primitives: torch.repeat_interleave,
F.scaled_dot_product_attention with enable_gqa=True on the module's own
weights (float64), and coursekit.reference.gqa_module_ref, which loops over the
query heads and picks key/value head h // (H // Hkv) by hand.
Decoding uses L04's KVCache: finish L04 first.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from coursekit.reference import gqa_module_ref, gqa_ref, mha_module_ref
from coursekit.testing import assert_close, assert_rejects, decode_in_chunks, randn

HIDDEN, HEADS = 36, 6  # head_dim 6: not a power of two
HEAD_DIM = HIDDEN // HEADS
KV_HEADS = {"groups_of_3": 2, "groups_of_2": 3, "mha": 6, "mqa": 1}

MAPPING_HINT = (
    "query head h must use key/value head h // n_rep (repeat_interleave: 0 0 0 1 1 1 for H=6, Hkv=2). "
    "x.repeat(1, n_rep, 1, 1) tiles the heads instead (0 1 0 1 0 1, head h % Hkv)")
ALIGNMENT_HINT = (
    "during decoding the Lq new queries are the LAST Lq positions: query i sees keys j <= i + Lk - Lq "
    "(bottom-right, L03's causal_mask(Lq, Lk)); tril() or SDPA's is_causal is top-left when Lq != Lk")


# ----------------------------------------------------------------- helpers --

def make_gqa(impl, num_kv_heads, hidden=HIDDEN, num_heads=HEADS, bias=False, seed=0, device="cpu",
             dtype=torch.float32):
    """The student's module with seeded unit-variance projections (peaked attention,
    so a query looking at the wrong key/value head shows)."""
    gqa = impl.gqa.GroupedQueryAttention(hidden, num_heads, num_kv_heads, bias=bias)
    with torch.no_grad():
        for i, name in enumerate("qkvo"):
            proj = getattr(gqa, f"{name}_proj")
            proj.weight.copy_(randn(*proj.weight.shape, seed=seed + i) / math.sqrt(proj.weight.shape[1]))
            if bias:
                proj.bias.copy_(0.5 * randn(*proj.bias.shape, seed=seed + 10 + i))
    return gqa.to(device=device, dtype=dtype)


def project(gqa, x, name, heads):
    """One projection of the module's own weights, in float64 on the CPU, split
    into heads: (B, L, hidden) -> (B, heads, L, D)."""
    proj = getattr(gqa, f"{name}_proj")
    x = x.detach().to("cpu", torch.float64)
    bias = None if proj.bias is None else proj.bias.detach().to("cpu", torch.float64)
    y = F.linear(x, proj.weight.detach().to("cpu", torch.float64), bias)
    return y.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def sdpa_reference(gqa, x, num_kv_heads, start=0, causal=True, key_padding_mask=None):
    """Outputs of the queries x[:, start:] attending to the keys of ALL of x,
    from F.scaled_dot_product_attention(..., enable_gqa=True) in float64.

    SDPA's is_causal=True is aligned top-left, which is only right when Lq == Lk;
    for a decoding chunk (start > 0) the bottom-right mask is written out:
    query i of Lq sees keys j <= i + Lk - Lq."""
    q = project(gqa, x[:, start:], "q", HEADS)  # (B, H, Lq, D)
    k = project(gqa, x, "k", num_kv_heads)  # (B, Hkv, Lk, D)
    v = project(gqa, x, "v", num_kv_heads)
    lq, lk = q.shape[2], k.shape[2]
    mask = torch.ones(lq, lk, dtype=torch.bool).tril(diagonal=lk - lq) if causal else None
    if key_padding_mask is not None:
        keys = key_padding_mask.cpu()[:, None, None, :]  # (B, 1, 1, Lk)
        mask = keys if mask is None else mask & keys
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)  # (B, H, Lq, D)
    if key_padding_mask is not None:  # SDPA gives NaN for a query with no visible key; the course gives 0
        out = out.nan_to_num(0.0)
    out = out.transpose(1, 2).reshape(q.shape[0], lq, -1)
    o = gqa.o_proj
    return F.linear(out, o.weight.detach().to("cpu", torch.float64),
                    None if o.bias is None else o.bias.detach().to("cpu", torch.float64))


# --------------------------------------------------------------- repeat_kv --

@pytest.mark.parametrize("shape,n_rep", [((2, 3, 5, 4), 2), ((1, 2, 7, 3), 3), ((2, 1, 4, 5), 6), ((3, 4, 1, 2), 1)],
                         ids=["Hkv3x2", "Hkv2x3", "mqa_x6", "n_rep1"])
def test_repeat_kv_matches_repeat_interleave(impl, device, shape, n_rep):
    x = randn(*shape, seed=1, device=device)
    got = impl.gqa.repeat_kv(x, n_rep)
    expected = torch.repeat_interleave(x, n_rep, dim=1)
    b, hkv, length, d = shape
    assert tuple(got.shape) == (b, hkv * n_rep, length, d), (
        f"repeat_kv of {shape} with n_rep={n_rep} has shape {tuple(got.shape)}, expected "
        f"(B, Hkv * n_rep, L, D) = {(b, hkv * n_rep, length, d)}: repeat the HEAD axis (dim 1)")
    assert got.device.type == device and got.dtype == x.dtype, f"got {got.dtype} on {got.device}, expected x's"
    assert torch.equal(got, expected), (
        f"repeat_kv(x, {n_rep}) differs from torch.repeat_interleave(x, {n_rep}, dim=1). hint: " + MAPPING_HINT)


def test_repeat_kv_maps_output_head_h_to_input_head_h_div_n_rep(impl):
    # Fill input head g with the value g: each output head then says which input head it copies.
    hkv, n_rep = 3, 4
    x = torch.arange(hkv, dtype=torch.float32).view(1, hkv, 1, 1).expand(2, hkv, 5, 3).contiguous()
    got = impl.gqa.repeat_kv(x, n_rep)
    assert tuple(got.shape) == (2, hkv * n_rep, 5, 3), f"shape {tuple(got.shape)}, expected (2, 12, 5, 3)"
    mapping = [int(got[0, h, 0, 0]) for h in range(hkv * n_rep)]
    expected = [h // n_rep for h in range(hkv * n_rep)]
    assert mapping == expected, (
        f"output head h copies input head {mapping}, expected {expected} (h // n_rep). hint: " + MAPPING_HINT)
    assert torch.equal(got, got[:, :, :1, :1].expand_as(got)), "every element of an output head is its input head's"


# -------------------------------------------------------------- the module --

@pytest.mark.parametrize("num_kv_heads", KV_HEADS.values(), ids=list(KV_HEADS))
def test_projections_have_hugging_face_llama_shapes(impl, num_kv_heads):
    gqa = impl.gqa.GroupedQueryAttention(HIDDEN, HEADS, num_kv_heads)
    expected = {"q_proj": (HEADS * HEAD_DIM, HIDDEN), "k_proj": (num_kv_heads * HEAD_DIM, HIDDEN),
                "v_proj": (num_kv_heads * HEAD_DIM, HIDDEN), "o_proj": (HIDDEN, HEADS * HEAD_DIM)}
    for name, shape in expected.items():
        proj = getattr(gqa, name)
        assert isinstance(proj, torch.nn.Linear), f"{name} should be an nn.Linear, got {type(proj).__name__}"
        assert tuple(proj.weight.shape) == shape, (
            f"{name}.weight has shape {tuple(proj.weight.shape)}, expected (out, in) = {shape}: k_proj and v_proj "
            "map hidden_size to num_kv_heads * head_dim (that is what makes the cache smaller)")
        assert proj.bias is None, f"{name} has a bias, but bias=False was asked for"
    got = (gqa.num_heads, gqa.num_kv_heads, gqa.head_dim)
    assert got == (HEADS, num_kv_heads, HEAD_DIM), (
        f"(num_heads, num_kv_heads, head_dim) = {got}, expected {(HEADS, num_kv_heads, HEAD_DIM)}")
    assert impl.gqa.GroupedQueryAttention(HIDDEN, HEADS, num_kv_heads, bias=True).k_proj.bias is not None, (
        "bias=True should give the projections a bias")


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("num_kv_heads", KV_HEADS.values(), ids=list(KV_HEADS))
def test_forward_matches_sdpa_enable_gqa(impl, device, num_kv_heads, causal):
    gqa = make_gqa(impl, num_kv_heads, seed=1, device=device)
    x = randn(2, 7, HIDDEN, seed=20, device=device)
    out = gqa(x, causal=causal)
    assert out.shape == x.shape, f"output shape {tuple(out.shape)}, expected (B, L, hidden) = {tuple(x.shape)}"
    assert_close(out, sdpa_reference(gqa, x, num_kv_heads, causal=causal), hint=(
        f"H={HEADS}, Hkv={num_kv_heads}: split q into H heads and k, v into Hkv heads with "
        "view(B, L, heads, D).transpose(1, 2), repeat k and v with repeat_kv, attend, merge the H heads back "
        "with transpose(1, 2).reshape(B, L, H * D), then o_proj. " + MAPPING_HINT))


PADDING = {
    "none": None,
    "left": [[True] * 7, [False, False, False, True, True, True, True]],
    "right": [[True] * 7, [True, True, True, True, True, False, False]],
}


@pytest.mark.parametrize("padding", PADDING, ids=list(PADDING))
@pytest.mark.parametrize("num_kv_heads", [2, 3], ids=["Hkv2", "Hkv3"])
def test_forward_matches_a_per_head_loop(impl, device, num_kv_heads, padding):
    gqa = make_gqa(impl, num_kv_heads, seed=2, device=device)
    x = randn(2, 7, HIDDEN, seed=21, device=device)
    keep = None if PADDING[padding] is None else torch.tensor(PADDING[padding], device=device)
    assert_close(gqa(x, key_padding_mask=keep), gqa_module_ref(gqa, x, causal=True, key_padding_mask=keep), hint=(
        "the reference loops over query heads and gives head h the key/value head h // (H // Hkv). "
        "key_padding_mask is True for real tokens, ANDed with the causal mask; a query with no visible key gives 0. "
        + MAPPING_HINT))


def test_mha_end_is_multi_head_attention(impl, device):
    # Hkv = H: one key/value head per query head, nothing repeated. L04's reference applies as is.
    gqa = make_gqa(impl, HEADS, seed=3, device=device)
    x = randn(3, 6, HIDDEN, seed=22, device=device)
    assert_close(gqa(x), mha_module_ref(gqa, x, causal=True), what="GroupedQueryAttention with Hkv = H",
                 hint="with Hkv = H, n_rep = 1: repeat_kv returns its input and this is L04's multi-head attention")


def test_mqa_end_shares_one_key_value_head(impl, device):
    # Hkv = 1: k_proj and v_proj have head_dim outputs, and every query head attends over the same K and V.
    gqa = make_gqa(impl, 1, seed=4, device=device)
    x = randn(2, 8, HIDDEN, seed=23, device=device)
    assert tuple(gqa.k_proj.weight.shape) == (HEAD_DIM, HIDDEN), "with one key/value head k_proj is (head_dim, hidden)"
    q = project(gqa, x, "q", HEADS)  # (B, H, L, D)
    k = project(gqa, x, "k", 1).expand(-1, HEADS, -1, -1)  # (B, 1, L, D) -> (B, H, L, D): the same head for all
    v = project(gqa, x, "v", 1).expand(-1, HEADS, -1, -1)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 8, HIDDEN)
    expected = out @ gqa.o_proj.weight.detach().to("cpu", torch.float64).T
    assert_close(gqa(x), expected, what="multi-query attention (num_kv_heads = 1)",
                 hint="every query head must use the single key/value head: repeat_kv(k, num_heads)")


# ---------------------------------------------------------------- decoding --

@pytest.mark.parametrize("num_kv_heads", KV_HEADS.values(), ids=list(KV_HEADS))
def test_prefill_then_one_token_at_a_time_equals_full_forward(impl, device, num_kv_heads):
    gqa = make_gqa(impl, num_kv_heads, seed=5, device=device)
    x = randn(2, 11, HIDDEN, seed=24, device=device)
    expected = sdpa_reference(gqa, x, num_kv_heads)
    cache = impl.kv_cache.KVCache(2, num_kv_heads, 16, HEAD_DIM, device=device)
    assert_close(gqa(x[:, :5], cache=cache), expected[:, :5], what="prefill output (5 tokens into an empty cache)",
                 hint="with an empty cache the prefill is ordinary causal attention over the prompt")
    for t in range(5, 11):
        out = gqa(x[:, t:t + 1], cache=cache)
        assert cache.seq_len == t + 1, f"after decoding position {t} the cache should hold {t + 1}, got {cache.seq_len}"
        assert_close(out, expected[:, t:t + 1], what=f"decoding step at position {t} (Lq=1, Lk={t + 1})",
                     hint=ALIGNMENT_HINT + "; the new k, v go through cache.update BEFORE repeat_kv")


def test_cache_holds_the_key_value_heads_before_repeating(impl, device):
    gqa = make_gqa(impl, 2, seed=6, device=device)
    x = randn(2, 9, HIDDEN, seed=25, device=device)
    cache = impl.kv_cache.KVCache(2, 2, 9, HEAD_DIM, device=device)  # Hkv = 2 heads, not H = 6
    decode_in_chunks(gqa, x, [6, 1, 2], cache)
    assert cache.seq_len == 9, f"the cache should hold 9 positions, got {cache.seq_len}"
    nothing = torch.zeros(2, 2, 0, HEAD_DIM, device=device)  # an empty update returns everything cached
    k_all, v_all = cache.update(nothing, nothing)
    assert_close(k_all, project(gqa, x, "k", 2), what="the cached keys (B, Hkv, L, D)", hint=(
        "the cache stores k_proj(x) split into num_kv_heads heads, exactly as projected: repeat_kv comes AFTER "
        "cache.update, so the cache is n_rep times smaller than the queries"))
    assert_close(v_all, project(gqa, x, "v", 2), what="the cached values (B, Hkv, L, D)")


@pytest.mark.parametrize("num_kv_heads", [2, 1], ids=["gqa", "mqa"])
def test_uneven_chunks_match_sdpa_with_a_bottom_right_mask(impl, device, num_kv_heads):
    gqa = make_gqa(impl, num_kv_heads, seed=7, device=device)
    x = randn(2, 13, HIDDEN, seed=26, device=device)
    cache = impl.kv_cache.KVCache(2, num_kv_heads, 13, HEAD_DIM, device=device)
    start = 0
    for n in [4, 1, 3, 2, 3]:
        end = start + n
        out = gqa(x[:, start:end], cache=cache)
        assert_close(out, sdpa_reference(gqa, x[:, :end], num_kv_heads, start=start),
                     what=f"chunk of {n} queries after {start} cached keys (Lq={n}, Lk={end})", hint=(
                         "a chunk of several tokens after a filled cache needs the causal mask WITHIN the chunk too: "
                         + ALIGNMENT_HINT))
        start = end


def test_left_padded_batch_decodes_like_each_row_alone(impl, device):
    # Prompts of 6, 3 and 4 real tokens, left-padded to 6, then 4 decoding steps.
    gqa = make_gqa(impl, 3, seed=8, device=device)
    lengths, prompt, steps = [6, 3, 4], 6, 4
    x = randn(3, prompt + steps, HIDDEN, seed=27, device=device)
    keep = torch.ones(3, prompt + steps, dtype=torch.bool, device=device)
    for b, n in enumerate(lengths):
        keep[b, :prompt - n] = False
    cache = impl.kv_cache.KVCache(3, 3, prompt + steps, HEAD_DIM, device=device)
    out = decode_in_chunks(gqa, x, [prompt] + [1] * steps, cache, key_padding_mask=keep)
    assert_close(out, gqa_module_ref(gqa, x, causal=True, key_padding_mask=keep), hint=(
        "key_padding_mask covers ALL keys attended to, the cached ones included: (B, Lk) with "
        "Lk = cache.seq_len + L_new, ANDed with the causal mask; padding queries give 0"))
    for b, n in enumerate(lengths):
        pad = prompt - n
        alone = gqa_module_ref(gqa, x[b:b + 1, pad:], causal=True)
        assert_close(out[b:b + 1, pad:], alone, what=f"row {b} ({pad} padding tokens on the left)")


# -------------------------------------------------------------- mha_to_gqa --

def group_mean(weight, num_kv_heads, head_dim):
    """Reference pooling, written out: new head g = mean of source heads g*r .. g*r + r - 1 (adjacent)."""
    w = weight.detach().to("cpu", torch.float64)
    r = w.shape[0] // head_dim // num_kv_heads
    heads = [w[h * head_dim:(h + 1) * head_dim] for h in range(w.shape[0] // head_dim)]
    return torch.cat([torch.stack(heads[g * r:(g + 1) * r]).mean(dim=0) for g in range(num_kv_heads)])


def test_mha_to_gqa_with_every_head_kept_is_exact(impl):
    mha = make_gqa(impl, HEADS, seed=9)
    gqa = impl.gqa.mha_to_gqa(mha, HEADS)
    assert isinstance(gqa, impl.gqa.GroupedQueryAttention), (
        f"expected a GroupedQueryAttention, got {type(gqa).__name__}")
    assert gqa.num_kv_heads == HEADS, f"num_kv_heads = {gqa.num_kv_heads}, expected {HEADS}"
    for name in "qkvo":
        assert_close(getattr(gqa, f"{name}_proj").weight, getattr(mha, f"{name}_proj").weight,
                     what=f"{name}_proj.weight", hint="one head per group: nothing to average, copy the weights")
    x = randn(2, 7, HIDDEN, seed=28)
    assert_close(gqa(x), mha(x), what="outputs after converting with num_kv_heads = num_heads")


@pytest.mark.parametrize("num_kv_heads", [3, 2, 1], ids=["groups_of_2", "groups_of_3", "mqa"])
def test_mha_to_gqa_mean_pools_each_group(impl, num_kv_heads):
    mha = make_gqa(impl, HEADS, seed=10)
    gqa = impl.gqa.mha_to_gqa(mha, num_kv_heads)
    r = HEADS // num_kv_heads
    hint = (f"new key/value head g is the MEAN of the {r} adjacent source heads g*{r} .. g*{r}+{r - 1}, each a "
            f"block of head_dim={HEAD_DIM} rows of k_proj.weight: reshape(Hkv, {r}, D, hidden).mean(1). Not the sum, "
            "not heads g, g+Hkv, ... (that is the .repeat mapping), not a mean over the rows inside a head")
    for name in "kv":
        got = getattr(gqa, f"{name}_proj").weight
        assert tuple(got.shape) == (num_kv_heads * HEAD_DIM, HIDDEN), (
            f"{name}_proj.weight has shape {tuple(got.shape)}, expected (num_kv_heads * D, hidden)")
        assert_close(got, group_mean(getattr(mha, f"{name}_proj").weight, num_kv_heads, HEAD_DIM),
                     what=f"pooled {name}_proj.weight", hint=hint)
    w = {name: getattr(mha, f"{name}_proj").weight for name in "qkvo"}
    x = randn(2, 7, HIDDEN, seed=29)
    pooled_k, pooled_v = (group_mean(w[name], num_kv_heads, HEAD_DIM) for name in "kv")
    expected = gqa_ref(x, w["q"], pooled_k, pooled_v, w["o"], HEADS, num_kv_heads,
                       mask=torch.ones(7, 7, dtype=torch.bool).tril())
    assert_close(gqa(x), expected, what="outputs of the converted module", hint=hint)


# ----------------------------------------------------------- kv_cache_bytes --

@pytest.mark.parametrize("config", [
    # (batch, seq_len, layers, kv heads, head_dim, dtype, bytes per element)
    (1, 4096, 32, 32, 128, torch.bfloat16, 2),   # Llama-2-7B (MHA), 4k context
    (1, 4096, 32, 8, 128, torch.bfloat16, 2),    # Mistral-7B / Llama-3-8B (GQA)
    (3, 1000, 5, 3, 48, torch.float32, 4),
    (2, 77, 2, 1, 6, torch.float16, 2),
    (4, 10, 3, 2, 5, torch.float64, 8),
], ids=["llama2_7b", "mistral_7b", "odd_fp32", "mqa_fp16", "fp64"])
def test_kv_cache_bytes_follows_the_formula(impl, config):
    batch, seq_len, layers, kv_heads, head_dim, dtype, element = config
    got = impl.gqa.kv_cache_bytes(batch, seq_len, layers, kv_heads, head_dim, dtype)
    expected = 2 * layers * batch * kv_heads * seq_len * head_dim * element
    assert isinstance(got, int) and not isinstance(got, bool), f"return a Python int, got {type(got).__name__}"
    assert got == expected, (
        f"kv_cache_bytes{(batch, seq_len, layers, kv_heads, head_dim, dtype)} = {got}, expected "
        f"2 * layers * B * Hkv * L * D * {element} bytes = {expected} (ratio {got / expected:.3g}). hint: K AND V "
        "(the factor 2), every layer, only the key/value heads, and the element size of the dtype")


# --------------------------------------------------------------- bad input --

def test_invalid_head_counts_are_rejected(impl):
    gqa_cls = impl.gqa.GroupedQueryAttention
    # A message may name either side of a count that does not divide the other.
    heads = ("num_kv_heads", "num_heads")
    assert_rejects(lambda: gqa_cls(36, 6, 4), *heads)   # 4 does not divide 6
    assert_rejects(lambda: gqa_cls(35, 5, 2), *heads)   # 2 does not divide 5
    assert_rejects(lambda: gqa_cls(35, 6, 2), "hidden_size", "num_heads")    # 6 does not divide 35
    assert_rejects(lambda: gqa_cls(36, 6, 0), "num_kv_heads")
    assert_rejects(lambda: gqa_cls(36, 0, 1), "num_heads")
    assert_rejects(lambda: gqa_cls(36, 6, 12), *heads)  # more key/value heads than query heads
    assert_rejects(lambda: impl.gqa.repeat_kv(randn(2, 3, 4, 5), 0), "n_rep")
    assert_rejects(lambda: impl.gqa.repeat_kv(randn(3, 4, 5), 2), "x")
    assert_rejects(lambda: impl.gqa.mha_to_gqa(make_gqa(impl, HEADS), 4), *heads)


def test_a_cache_with_num_heads_heads_is_rejected(impl):
    gqa = make_gqa(impl, 2, seed=11)
    cache = impl.kv_cache.KVCache(2, HEADS, 8, HEAD_DIM)  # the classic mistake: H heads instead of Hkv
    assert_rejects(lambda: gqa(randn(2, 3, HIDDEN, seed=30), cache=cache), "cache", "num_kv_heads")
    assert cache.seq_len == 0, "a rejected call must leave the cache untouched"
