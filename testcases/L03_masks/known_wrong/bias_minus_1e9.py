"""mask_to_bias fills with -1e9 instead of -inf: a fully masked row becomes a uniform average instead of zeros."""
MODULE = "masks"


def mask_to_bias(mask, dtype=torch.float32):
    _check_bool_mask("mask", mask)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, -1e9)
