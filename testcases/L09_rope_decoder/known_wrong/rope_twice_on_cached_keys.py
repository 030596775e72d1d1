"""Rotates keys before caching AND again after cache.update, by their positions 0..Lk-1: cached keys are rotated twice."""
MODULE = "decoder"


def _forward(self, x, cos, sin, key_padding_mask=None, cache=None):
    B, L, _ = x.shape
    H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
    q = apply_rope(self.q_proj(x).view(B, L, H, D).transpose(1, 2), cos, sin)
    k = apply_rope(self.k_proj(x).view(B, L, Hkv, D).transpose(1, 2), cos, sin)
    v = self.v_proj(x).view(B, L, Hkv, D).transpose(1, 2)
    if cache is not None:
        k, v = cache.update(k, v)
        past = k.shape[-2] - L
        if past:  # "the cache forgot its angles": rotate the cached part by its positions again
            c, s = rope_cos_sin(torch.arange(past), D, dtype=cos.dtype)
            k = torch.cat([apply_rope(k[:, :, :past], c, s), k[:, :, past:]], dim=2)
    Lk = k.shape[-2]
    keys = None if key_padding_mask is None else key_padding_mask[:, -Lk:]
    band = causal_mask(L, Lk) if self.window is None else sliding_window_mask(L, Lk, self.window)
    mask = combine_masks(band, None if keys is None else keys[:, None, None, :])
    out = scaled_dot_product_attention(q, repeat_kv(k, self.n_rep), repeat_kv(v, self.n_rep), mask=mask)
    return self.o_proj(out.transpose(1, 2).reshape(B, L, H * D))


RopeAttention.forward = _forward
