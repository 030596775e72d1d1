"""Every forward call numbers its tokens from 0: a decoding step after the cache rotates its query and key as position 0."""
MODULE = "decoder"


def token_positions(past_len, new_len, key_padding_mask=None, device=None):
    if key_padding_mask is None:
        return torch.arange(new_len, device=device)[None, :]
    real = key_padding_mask[:, past_len:].long().cumsum(dim=-1) - 1  # counts only this call's tokens
    return real.clamp(min=0)
