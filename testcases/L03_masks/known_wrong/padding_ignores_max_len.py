"""Padding mask always max(lengths) wide: an explicit max_len (the batch's padded length) is ignored."""
MODULE = "masks"

_reference_padding_mask = padding_mask


def padding_mask(lengths, max_len=None, device=None):
    return _reference_padding_mask(lengths, None, device)
