"""The quantized decode kernel unpacks the first element of a byte from its HIGH bits: the 4-bit (and 2-bit) codes of every pair of channels are swapped."""
MODULE = "kv_quant_triton"


@triton.jit
def _unpack(packed, BITS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    if BITS == 8:
        codes = packed
    elif BITS == 4:
        lo = packed & ((1 << BITS) - 1)
        hi = packed >> BITS
        codes = tl.reshape(tl.join(hi, lo), (BLOCK_N, BLOCK_D))  # BUG: high nibble first
    else:
        c0 = packed & ((1 << BITS) - 1)
        c1 = (packed >> BITS) & ((1 << BITS) - 1)
        c2 = (packed >> (2 * BITS)) & ((1 << BITS) - 1)
        c3 = packed >> (3 * BITS)
        codes = tl.reshape(tl.join(tl.join(c3, c1), tl.join(c2, c0)), (BLOCK_N, BLOCK_D))  # BUG: reversed
    return codes
