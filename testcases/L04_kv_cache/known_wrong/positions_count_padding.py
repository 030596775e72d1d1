"""token_positions ignores the mask: left padding shifts a row's positions, so it decodes differently."""
MODULE = "kv_cache"

_reference_positions = token_positions


def token_positions(past_len, new_len, key_padding_mask=None, device=None):
    positions = _reference_positions(past_len, new_len, None, device)
    return positions if key_padding_mask is None else positions.expand(key_padding_mask.shape[0], -1)
