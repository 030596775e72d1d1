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
