"""Repeats k and v to num_heads BEFORE cache.update and expects a cache of num_heads heads: right outputs, n_rep times the memory."""
from types import SimpleNamespace

MODULE = "gqa"

_reference_check_forward = _check_forward


def _check_forward(module, x, key_padding_mask, cache, causal):
    # the student's check: the cache must have num_heads heads (as in L04)
    as_if_mha = SimpleNamespace(hidden_size=module.hidden_size, q_proj=module.q_proj, num_heads=module.num_heads,
                                num_kv_heads=module.num_heads, head_dim=module.head_dim)
    _reference_check_forward(as_if_mha, x, key_padding_mask, cache, causal)


def _forward(self, hidden_states, key_padding_mask=None, cache=None, causal=True):
    _check_forward(self, hidden_states, key_padding_mask, cache, causal)
    B, L, _ = hidden_states.shape
    H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
    q = self.q_proj(hidden_states).view(B, L, H, D).transpose(1, 2)
    k = repeat_kv(self.k_proj(hidden_states).view(B, L, Hkv, D).transpose(1, 2), self.n_rep)
    v = repeat_kv(self.v_proj(hidden_states).view(B, L, Hkv, D).transpose(1, 2), self.n_rep)
    if cache is not None:
        k, v = cache.update(k, v)  # (B, H, Lk, D): the cache holds the repeated heads
    Lk = k.shape[-2]
    mask = causal_mask(L, Lk, device=hidden_states.device) if causal else None
    if key_padding_mask is not None:
        keys = key_padding_mask[:, None, None, :]
        mask = keys if mask is None else mask & keys
    out = scaled_dot_product_attention(q, k, v, mask=mask)
    return self.o_proj(out.transpose(1, 2).reshape(B, L, H * D))


GroupedQueryAttention.forward = _forward
