"""The quantized decode kernel reads the keys' statistics as if keys were grouped per token, like the values: one scale and zero per key (its group's channel 0) for all its channels, instead of one per channel."""
MODULE = "kv_quant_triton"


@triton.jit
def _load_key_tile(kc_base, ks_base, kz_base, stride_kcn, stride_ksg, start_n, offs_n, n_ok, offs_d, d_ok,
                   BITS: tl.constexpr, NBYTES: tl.constexpr, GROUP_N: tl.constexpr, ONE_GROUP: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_byte = tl.arange(0, BLOCK_D * BITS // 8)
    packed = tl.load(kc_base + offs_n[:, None].to(tl.int64) * stride_kcn + offs_byte[None, :],
                     mask=n_ok[:, None] & (offs_byte[None, :] < NBYTES), other=0)
    codes = _unpack(packed, BITS, BLOCK_N, BLOCK_D).to(tl.float32)
    g = (offs_n // GROUP_N).to(tl.int64)
    # BUG: one statistic per token, broadcast over the channels (the value layout), not one per channel
    scale = tl.load(ks_base + g * stride_ksg, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    zero = tl.load(kz_base + g * stride_ksg, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    return codes * scale + zero
