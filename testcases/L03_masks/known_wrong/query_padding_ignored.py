"""attention_mask_from_padding ignores query_padding: padded queries still attend, their rows are not emptied."""
MODULE = "masks"

_reference_from_padding = attention_mask_from_padding


def attention_mask_from_padding(key_padding, query_padding=None):
    mask = _reference_from_padding(key_padding)
    if query_padding is None:
        return mask
    return mask.expand(key_padding.shape[0], 1, query_padding.shape[1], key_padding.shape[1])
