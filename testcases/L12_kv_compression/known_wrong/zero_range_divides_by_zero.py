"""A constant group (max == min) divides by its zero scale: the NaN code, packed with float arithmetic, wipes its byte."""
MODULE = "kv_quant"

_quantize = quantize


def quantize(x, bits, dim, group_size=None):
    qx = _quantize(x, bits, dim, group_size)
    n = x.shape[qx.dim]
    expand = lambda t: t.float().repeat_interleave(qx.group_size, dim=qx.dim).narrow(qx.dim, 0, n)
    codes = torch.round((x.float() - expand(qx.zero)) / expand(qx.scale)).clamp(0, 2 ** bits - 1)  # 0 / 0 = NaN
    if bits == 8:
        qx.codes = torch.where(codes.isnan(), 255.0, codes).to(torch.uint8)
        return qx
    per_byte = 8 // bits
    codes = torch.nn.functional.pad(codes, (0, (-codes.shape[-1]) % per_byte))
    codes = codes.reshape(*codes.shape[:-1], codes.shape[-1] // per_byte, per_byte)
    packed = (codes * (2.0 ** (bits * torch.arange(per_byte)))).sum(-1)  # NaN + anything = NaN
    qx.codes = torch.where(packed.isnan(), 255.0, packed).to(torch.uint8)
    return qx
