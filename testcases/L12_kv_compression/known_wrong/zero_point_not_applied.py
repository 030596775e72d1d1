"""dequantize forgets the zero point: code * scale, the grid starts at 0 instead of the group's minimum."""
MODULE = "kv_quant"

_dequantize = dequantize


def dequantize(qx):
    zero = qx.zero
    qx.zero = torch.zeros_like(zero)
    try:
        return _dequantize(qx)
    finally:
        qx.zero = zero
