"""The quantized decode kernel dequantizes K and V as code * scale, without the zero point: every group's grid starts at 0 instead of its minimum."""
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
    scale = tl.load(ks_base + g[:, None] * stride_ksg + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :],
                    other=0.0).to(tl.float32)
    return codes * scale  # BUG: + zero forgotten


@triton.jit
def _load_value_tile(vc_base, vs_base, vz_base, stride_vcn, stride_vsn, offs_n, n_ok, offs_d, d_ok,
                     BITS: tl.constexpr, NBYTES: tl.constexpr, GROUP_D: tl.constexpr, ONE_GROUP: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_byte = tl.arange(0, BLOCK_D * BITS // 8)
    packed = tl.load(vc_base + offs_n[:, None].to(tl.int64) * stride_vcn + offs_byte[None, :],
                     mask=n_ok[:, None] & (offs_byte[None, :] < NBYTES), other=0)
    codes = _unpack(packed, BITS, BLOCK_N, BLOCK_D).to(tl.float32)
    rows = offs_n.to(tl.int64) * stride_vsn
    cols = offs_d // GROUP_D
    scale = tl.load(vs_base + rows[:, None] + cols[None, :], mask=n_ok[:, None] & d_ok[None, :],
                    other=0.0).to(tl.float32)
    return codes * scale  # BUG: + zero forgotten
