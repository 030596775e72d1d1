"""Checks key_padding_mask's length only after cache.update: a rejected call has already written into the cache."""
MODULE = "kv_cache"
CAUGHT_BY = "advanced"


def _forward(self, x, key_padding_mask=None, cache=None, causal=True):
    _check_forward(self, x, None, cache, causal)
    B, L, _ = x.shape
    H, D = self.num_heads, self.head_dim
    q = self.q_proj(x).view(B, L, H, D).transpose(1, 2)
    k = self.k_proj(x).view(B, L, H, D).transpose(1, 2)
    v = self.v_proj(x).view(B, L, H, D).transpose(1, 2)
    if cache is not None:
        k, v = cache.update(k, v)
    Lk = k.shape[-2]
    mask = causal_mask(L, Lk, device=x.device) if causal else None
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (B, Lk):
            raise ValueError(f"key_padding_mask has shape {tuple(key_padding_mask.shape)}, expected {(B, Lk)}")
        keys = key_padding_mask[:, None, None, :]
        mask = keys if mask is None else mask & keys
    out = scaled_dot_product_attention(q, k, v, mask=mask)
    return self.o_proj(out.transpose(1, 2).reshape(B, L, H * D))


MultiHeadAttention.forward = _forward
