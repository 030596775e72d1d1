"""Symmetric quantization (a grid of +-absmax centred on 0) instead of asymmetric min-max: wastes levels on data not centred on 0."""
MODULE = "kv_quant"

_asymmetric = quantize


def quantize(x, bits, dim, group_size=None):
    qx = _asymmetric(x, bits, dim, group_size)
    n = x.shape[qx.dim]
    absmax = torch.maximum(qx.zero.abs(), (qx.zero + qx.scale * (2 ** bits - 1)).abs()).float()
    scale = 2 * absmax / (2 ** bits - 1)  # the grid [-absmax, absmax]
    zero = -absmax
    expand = lambda t: t.repeat_interleave(qx.group_size, dim=qx.dim).narrow(qx.dim, 0, n)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((x.float() - expand(zero)) / expand(safe)).clamp(0, 2 ** bits - 1).to(torch.uint8)
    packed = codes if bits == 8 else pack_codes(codes, bits)
    return QuantizedTensor(packed, scale.to(x.dtype), zero.to(x.dtype), bits, qx.dim, qx.group_size, qx.shape, x.dtype)
