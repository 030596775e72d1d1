"""mask_to_bias ignores dtype and always returns float32: a half-precision model gets a bias of the wrong dtype."""
MODULE = "masks"

_reference_mask_to_bias = mask_to_bias


def mask_to_bias(mask, dtype=torch.float32):
    return _reference_mask_to_bias(mask, torch.float32)
