"""Padding mask off by one (arange <= length): the first pad after every sequence counts as a real token."""
MODULE = "masks"

_reference_padding_mask = padding_mask


def padding_mask(lengths, max_len=None, device=None):
    mask = _reference_padding_mask(lengths, max_len, device)
    lengths = torch.as_tensor(lengths, device=mask.device)
    return torch.arange(mask.shape[1], device=mask.device)[None, :] <= lengths[:, None]
