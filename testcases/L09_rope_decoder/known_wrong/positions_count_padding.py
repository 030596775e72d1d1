"""Positions are column indices, padding included: a left-padded row's first real token is not at position 0."""
MODULE = "decoder"


def token_positions(past_len, new_len, key_padding_mask=None, device=None):
    return torch.arange(past_len, past_len + new_len, device=device)[None, :]
