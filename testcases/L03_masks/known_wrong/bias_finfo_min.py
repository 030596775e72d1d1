"""mask_to_bias fills with torch.finfo(dtype).min (the Hugging Face habit): finite, so empty rows average the values."""
MODULE = "masks"


def mask_to_bias(mask, dtype=torch.float32):
    _check_bool_mask("mask", mask)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
