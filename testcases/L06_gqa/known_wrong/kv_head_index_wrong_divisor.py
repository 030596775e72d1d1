"""Maps query head h to key/value head h // num_kv_heads (dividing by the number of groups, not by the group size)."""
MODULE = "gqa"


def _forward(self, hidden_states, key_padding_mask=None, cache=None, causal=True):
    _check_forward(self, hidden_states, key_padding_mask, cache, causal)
    B, L, _ = hidden_states.shape
    H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
    q = self.q_proj(hidden_states).view(B, L, H, D).transpose(1, 2)
    k = self.k_proj(hidden_states).view(B, L, Hkv, D).transpose(1, 2)
    v = self.v_proj(hidden_states).view(B, L, Hkv, D).transpose(1, 2)
    if cache is not None:
        k, v = cache.update(k, v)
    Lk = k.shape[-2]
    index = torch.arange(H, device=k.device) // Hkv  # should be // self.n_rep
    k, v = k.index_select(1, index), v.index_select(1, index)
    mask = causal_mask(L, Lk, device=hidden_states.device) if causal else None
    if key_padding_mask is not None:
        keys = key_padding_mask[:, None, None, :]
        mask = keys if mask is None else mask & keys
    out = scaled_dot_product_attention(q, k, v, mask=mask)
    return self.o_proj(out.transpose(1, 2).reshape(B, L, H * D))


GroupedQueryAttention.forward = _forward
