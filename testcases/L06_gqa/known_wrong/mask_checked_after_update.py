"""Checks key_padding_mask's length only after cache.update: a rejected call has already written into the cache."""
MODULE = "gqa"
CAUGHT_BY = "advanced"


def _forward(self, hidden_states, key_padding_mask=None, cache=None, causal=True):
    _check_forward(self, hidden_states, None, cache, causal)
    B, L, _ = hidden_states.shape
    H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
    q = self.q_proj(hidden_states).view(B, L, H, D).transpose(1, 2)
    k = self.k_proj(hidden_states).view(B, L, Hkv, D).transpose(1, 2)
    v = self.v_proj(hidden_states).view(B, L, Hkv, D).transpose(1, 2)
    if cache is not None:
        k, v = cache.update(k, v)
    Lk = k.shape[-2]
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (B, Lk):
        raise ValueError(f"key_padding_mask has shape {tuple(key_padding_mask.shape)}, expected {(B, Lk)}")
    if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
        raise TypeError("key_padding_mask must be bool")
    k, v = repeat_kv(k, self.n_rep), repeat_kv(v, self.n_rep)
    mask = causal_mask(L, Lk, device=hidden_states.device) if causal else None
    if key_padding_mask is not None:
        keys = key_padding_mask[:, None, None, :]
        mask = keys if mask is None else mask & keys
    out = scaled_dot_product_attention(q, k, v, mask=mask)
    return self.o_proj(out.transpose(1, 2).reshape(B, L, H * D))


GroupedQueryAttention.forward = _forward
