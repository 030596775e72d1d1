"""Padding mask for left padding (True on the last lengths[b] positions) where the contract is right padding."""
MODULE = "masks"

_reference_padding_mask = padding_mask


def padding_mask(lengths, max_len=None, device=None):
    return _reference_padding_mask(lengths, max_len, device).flip(-1)
