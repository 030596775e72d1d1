"""coursekit.reference: the float64 references every lesson is graded against."""
import math

import torch
import torch.nn.functional as F

from coursekit.reference import attention_ref, causal_mask_ref, padding_mask_ref, softmax_ref
from coursekit.testing import make_qkv, randn, random_bool_mask


def test_softmax_ref_gives_zeros_on_an_all_neg_inf_row():
    x = randn(3, 5, seed=0)
    x[1] = -math.inf
    out = softmax_ref(x)
    assert out.dtype == torch.float64
    assert torch.equal(out[1], torch.zeros(5, dtype=torch.float64))
    torch.testing.assert_close(out[[0, 2]], torch.softmax(x[[0, 2]].double(), dim=-1))


def test_softmax_ref_honours_dim():
    x = randn(4, 6, seed=1)
    torch.testing.assert_close(softmax_ref(x, dim=0), torch.softmax(x.double(), dim=0))


def keep_mask(q_len, k_len, seed):
    """A random True = attend mask in which every query keeps at least one key."""
    mask = random_bool_mask(q_len, k_len, seed=seed)
    mask[:, 0] = True
    return mask


def test_attention_ref_boolean_mask_equals_additive_mask():
    q, k, v = make_qkv(q_len=5, k_len=7, seed=0)
    mask = keep_mask(5, 7, seed=1)
    additive = torch.zeros(5, 7).masked_fill(~mask, -math.inf)
    out_bool, weights_bool = attention_ref(q, k, v, mask=mask)
    out_add, weights_add = attention_ref(q, k, v, mask=additive)
    assert torch.equal(out_bool, out_add)
    assert torch.equal(weights_bool, weights_add)
    assert torch.all(weights_bool[..., ~mask] == 0)


def test_attention_ref_fully_masked_row_gives_zeros():
    q, k, v = make_qkv(q_len=3, k_len=4, seed=2)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[1] = False
    out, weights = attention_ref(q, k, v, mask=mask)
    assert torch.equal(out[..., 1, :], torch.zeros_like(out[..., 1, :]))
    assert torch.equal(weights[..., 1, :], torch.zeros_like(weights[..., 1, :]))


def test_attention_ref_matches_torch_sdpa_in_float64():
    q, k, v = make_qkv(batch=2, heads=3, q_len=5, k_len=7, head_dim=8, v_dim=6,
                       seed=3, dtype=torch.float64)
    mask = keep_mask(5, 7, seed=4)
    for scale in (None, 0.3):
        out, _ = attention_ref(q, k, v, mask=mask, scale=scale)
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_causal_mask_ref_is_bottom_right():
    # Lq=2, Lk=4: the queries are the last two positions (2 and 3).
    assert causal_mask_ref(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]
    assert causal_mask_ref(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert not causal_mask_ref(3, 2)[0].any(), "with Lk < Lq the first query precedes every key"


def test_padding_mask_ref_marks_real_tokens():
    assert padding_mask_ref([2, 0, 3]).tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    assert padding_mask_ref([1], max_len=3).tolist() == [[True, False, False]]


def _mha_weights(d_model, seed, bias):
    weights = [randn(d_model, d_model, seed=seed + i, dtype=torch.float64) / math.sqrt(d_model) for i in range(4)]
    biases = [randn(d_model, seed=seed + 10 + i, dtype=torch.float64) if bias else None for i in range(4)]
    return weights, biases


def _torch_mha(x, weights, biases, num_heads, attn_mask=None, key_padding_mask=None):
    """nn.MultiheadAttention with the same weights. Its masks use the opposite
    polarity (True = blocked)."""
    d_model = x.shape[-1]
    bias = biases[0] is not None
    mha = torch.nn.MultiheadAttention(d_model, num_heads, bias=bias, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat(weights[:3]))
        mha.out_proj.weight.copy_(weights[3])
        if bias:
            mha.in_proj_bias.copy_(torch.cat(biases[:3]))
            mha.out_proj.bias.copy_(biases[3])
    out, _ = mha(x, x, x, attn_mask=None if attn_mask is None else ~attn_mask,
                 key_padding_mask=None if key_padding_mask is None else ~key_padding_mask, need_weights=False)
    return out


def test_mha_ref_matches_torch_multihead_attention():
    from coursekit.reference import mha_ref
    x = randn(2, 6, 12, seed=20, dtype=torch.float64)
    keep = torch.tensor([[True] * 6, [False, False, True, True, True, True]])  # row 1: left padding
    causal = causal_mask_ref(6)
    for bias in (False, True):
        weights, biases = _mha_weights(12, seed=21, bias=bias)
        b = dict(zip(("b_q", "b_k", "b_v", "b_o"), biases))
        torch.testing.assert_close(mha_ref(x, *weights, 3, **b), _torch_mha(x, weights, biases, 3))
        got = mha_ref(x, *weights, 3, mask=causal, **b)
        torch.testing.assert_close(got, _torch_mha(x, weights, biases, 3, attn_mask=causal))
        got = mha_ref(x, *weights, 3, mask=keep[:, None, None, :], **b)   # padding only: no empty rows
        torch.testing.assert_close(got, _torch_mha(x, weights, biases, 3, key_padding_mask=keep))


def test_mha_module_ref_reads_a_modules_weights():
    from coursekit.reference import mha_module_ref, mha_ref

    class Module(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.num_heads = 2
            for name in "qkvo":
                setattr(self, f"{name}_proj", torch.nn.Linear(8, 8, bias=True, dtype=torch.float64))

    module = Module()
    x = randn(2, 5, 8, seed=22, dtype=torch.float64)
    keep = torch.tensor([[True] * 5, [False, True, True, True, True]])
    weights = [getattr(module, f"{n}_proj").weight for n in "qkvo"]
    biases = {f"b_{n}": getattr(module, f"{n}_proj").bias for n in "qkvo"}
    want = mha_ref(x, *weights, 2, mask=causal_mask_ref(5) & keep[:, None, None, :], **biases)
    got = mha_module_ref(module, x, causal=True, key_padding_mask=keep)
    torch.testing.assert_close(got, want)
    assert torch.equal(got[1, 0], biases["b_o"].detach()), "a fully masked query gives 0 before o_proj"


def test_tiny_decoder_ref_matches_a_forward_through_torch_modules():
    from coursekit.reference import tiny_decoder_ref
    nn = torch.nn
    torch.manual_seed(23)
    d_model, heads, vocab = 16, 4, 11

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
            self.attn = nn.Module()
            self.attn.num_heads = heads
            for name in "qkvo":
                setattr(self.attn, f"{name}_proj", nn.Linear(d_model, d_model, bias=False))
            self.mlp = nn.Sequential(nn.Linear(d_model, 32), nn.GELU(), nn.Linear(32, d_model))

    model = nn.Module()
    model.tok_emb, model.pos_emb = nn.Embedding(vocab, d_model), nn.Embedding(20, d_model)
    model.blocks = nn.ModuleList([Block(), Block()])
    model.ln_f, model.lm_head = nn.LayerNorm(d_model), nn.Linear(d_model, vocab, bias=False)
    model = model.double()
    ids = torch.randint(0, vocab, (2, 7))

    def forward(ids, positions, keep):
        h = model.tok_emb(ids) + model.pos_emb(positions)
        for block in model.blocks:
            a = block.attn
            weights = [getattr(a, f"{n}_proj").weight for n in "qkvo"]
            attn = _torch_mha(block.ln_1(h), weights, [None] * 4, heads, attn_mask=causal_mask_ref(ids.shape[1]),
                              key_padding_mask=keep)
            h = h + attn
            h = h + block.mlp(block.ln_2(h))
        return model.lm_head(model.ln_f(h))

    with torch.no_grad():
        torch.testing.assert_close(tiny_decoder_ref(model, ids), forward(ids, torch.arange(7)[None], None))
        # Left padding: the real tokens of row 1 are numbered from 0 and see no padding. Compare the real
        # positions only (nn.MultiheadAttention gives NaN on the fully masked padding rows).
        keep = torch.tensor([[True] * 7, [False, False, True, True, True, True, True]])
        got = tiny_decoder_ref(model, ids, key_padding_mask=keep)
        want_row1 = forward(ids[1:, 2:], torch.arange(5)[None], None)
        torch.testing.assert_close(got[1:, 2:], want_row1)
        torch.testing.assert_close(got[:1], forward(ids[:1], torch.arange(7)[None], None))


# --- L09 ---
def test_rope_rotate_ref_is_a_2d_rotation_of_each_pair():
    from coursekit.reference import rope_rotate_ref
    x = randn(2, 5, 6, seed=20, dtype=torch.float64)
    pos = torch.arange(5) * 7
    out = rope_rotate_ref(x, pos, base=100.0)
    for i in range(3):
        angle = pos.double() * 100.0 ** (-2 * i / 6)
        c, s = angle.cos(), angle.sin()
        torch.testing.assert_close(out[..., i], x[..., i] * c - x[..., i + 3] * s)
        torch.testing.assert_close(out[..., i + 3], x[..., i] * s + x[..., i + 3] * c)


def test_rope_interleaved_to_half_orders_even_then_odd_rows_per_head():
    from coursekit.reference import rope_interleaved_to_half
    w = torch.arange(8.0)[:, None].expand(8, 3)  # 2 heads of D = 4: rows 0..7
    assert rope_interleaved_to_half(w, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_rms_norm_ref_matches_the_formula():
    from coursekit.reference import rms_norm_ref
    x = randn(3, 8, seed=21, dtype=torch.float64) + 2
    w = randn(8, seed=22, dtype=torch.float64)
    torch.testing.assert_close(rms_norm_ref(x, w, 1e-2), w * x / (x.pow(2).mean(-1, keepdim=True) + 1e-2).sqrt())


def test_hf_exact_removes_hugging_faces_float32_rounding():
    from coursekit.reference import hf_decoder
    ids = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = hf_decoder(num_kv_heads=2)(ids).logits
        plain = hf_decoder(num_kv_heads=2, exact=False)(ids).logits  # float64 weights, float32 RoPE and RMSNorm
        hf32 = hf_decoder(num_kv_heads=2, dtype=torch.float32)(ids).logits
    assert exact.dtype == torch.float64
    assert 1e-9 < (plain - exact).abs().max() < 1e-4, "without hf_exact the float64 model is float32-accurate"
    torch.testing.assert_close(hf32.double(), exact, atol=1e-5, rtol=1.3e-6)
