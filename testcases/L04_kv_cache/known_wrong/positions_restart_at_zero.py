"""token_positions ignores past_len: every decoding step embeds its token at position 0."""
MODULE = "kv_cache"

_reference_positions = token_positions


def token_positions(past_len, new_len, key_padding_mask=None, device=None):
    if key_padding_mask is not None:
        key_padding_mask = key_padding_mask[:, past_len:]
    return _reference_positions(0, new_len, key_padding_mask, device)
