"""Codes packed with the FIRST element in the HIGH bits (nibbles swapped): consistent with itself, wrong for every other reader."""
MODULE = "kv_quant"


def pack_codes(codes, bits):
    per_byte = 8 // bits
    pad = (-codes.shape[-1]) % per_byte
    codes = torch.nn.functional.pad(codes.to(torch.uint8), (0, pad))
    codes = codes.reshape(*codes.shape[:-1], codes.shape[-1] // per_byte, per_byte)
    shifts = (per_byte - 1 - torch.arange(per_byte, dtype=torch.uint8)) * bits
    return (codes << shifts).sum(dim=-1, dtype=torch.uint8)


def unpack_codes(packed, bits, n):
    per_byte = 8 // bits
    shifts = (per_byte - 1 - torch.arange(per_byte, dtype=torch.uint8)) * bits
    return ((packed[..., None] >> shifts) & ((1 << bits) - 1)).flatten(-2)[..., :n]
