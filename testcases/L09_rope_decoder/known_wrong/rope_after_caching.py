"""Caches the UNrotated keys and rotates what the cache returns with the new tokens' angles: every cached key gets the current position."""
MODULE = "decoder"


def _forward(self, x, cos, sin, key_padding_mask=None, cache=None):
    B, L, _ = x.shape
    H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
    q = apply_rope(self.q_proj(x).view(B, L, H, D).transpose(1, 2), cos, sin)
    k = self.k_proj(x).view(B, L, Hkv, D).transpose(1, 2)
    v = self.v_proj(x).view(B, L, Hkv, D).transpose(1, 2)
    if cache is not None:
        k, v = cache.update(k, v)
    Lk = k.shape[-2]
    c, s = (cos, sin) if Lk == L else (cos[..., -1:, :], sin[..., -1:, :])  # the newest angle for every key
    k = apply_rope(k, c, s)
    keys = None if key_padding_mask is None else key_padding_mask[:, -Lk:]
    band = causal_mask(L, Lk) if self.window is None else sliding_window_mask(L, Lk, self.window)
    mask = combine_masks(band, None if keys is None else keys[:, None, None, :])
    out = scaled_dot_product_attention(q, repeat_kv(k, self.n_rep), repeat_kv(v, self.n_rep), mask=mask)
    return self.o_proj(out.transpose(1, 2).reshape(B, L, H * D))


RopeAttention.forward = _forward
