"""Splits heads with view(B, H, L, D) instead of view(B, L, H, D).transpose(1, 2): heads mix positions."""
MODULE = "kv_cache"


def _forward(self, x, key_padding_mask=None, cache=None, causal=True):
    _check_forward(self, x, key_padding_mask, cache, causal)
    B, L, _ = x.shape
    H, D = self.num_heads, self.head_dim
    q = self.q_proj(x).reshape(B, H, L, D)
    k = self.k_proj(x).reshape(B, H, L, D)
    v = self.v_proj(x).reshape(B, H, L, D)
    if cache is not None:
        k, v = cache.update(k, v)
    Lk = k.shape[-2]
    mask = causal_mask(L, Lk, device=x.device) if causal else None
    if key_padding_mask is not None:
        keys = key_padding_mask[:, None, None, :]
        mask = keys if mask is None else mask & keys
    out = scaled_dot_product_attention(q, k, v, mask=mask)
    return self.o_proj(out.reshape(B, L, H * D))


MultiHeadAttention.forward = _forward
