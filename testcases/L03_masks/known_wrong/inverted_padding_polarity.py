"""Padding mask with nn.MultiheadAttention's polarity (True = pad) instead of the course's True = real token."""
MODULE = "masks"

_reference_padding_mask = padding_mask


def padding_mask(lengths, max_len=None, device=None):
    return ~_reference_padding_mask(lengths, max_len, device)
