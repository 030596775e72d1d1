"""attention_mask_from_padding returns (B, 1, Lk) without the head dim: against (B, H, Lq, Lk) the batch lines up with the heads."""
MODULE = "masks"

_reference_from_padding = attention_mask_from_padding


def attention_mask_from_padding(key_padding, query_padding=None):
    mask = _reference_from_padding(key_padding, query_padding)
    return mask[:, 0]  # (B, 1, Lk) or (B, Lq, Lk)
