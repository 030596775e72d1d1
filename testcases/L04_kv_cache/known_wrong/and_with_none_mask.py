"""Combines the masks as `mask & keys` even when causal=False left mask = None: padding without causal crashes (use combine_masks)."""
MODULE = "kv_cache"


def _forward(self, x, key_padding_mask=None, cache=None, causal=True):
    _check_forward(self, x, key_padding_mask, cache, causal)
    B, L, _ = x.shape
    H, D = self.num_heads, self.head_dim
    q = self.q_proj(x).view(B, L, H, D).transpose(1, 2)
    k = self.k_proj(x).view(B, L, H, D).transpose(1, 2)
    v = self.v_proj(x).view(B, L, H, D).transpose(1, 2)
    if cache is not None:
        k, v = cache.update(k, v)
    mask = causal_mask(L, k.shape[-2], device=x.device) if causal else None
    if key_padding_mask is not None:
        mask = mask & key_padding_mask[:, None, None, :]  # None & tensor: TypeError
    out = scaled_dot_product_attention(q, k, v, mask=mask)
    return self.o_proj(out.transpose(1, 2).reshape(B, L, H * D))


MultiHeadAttention.forward = _forward
