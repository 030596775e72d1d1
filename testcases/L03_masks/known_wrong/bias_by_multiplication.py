"""mask_to_bias as (~mask) * -inf: 0 * -inf is NaN, so every visible position gets NaN instead of 0."""
MODULE = "masks"


def mask_to_bias(mask, dtype=torch.float32):
    _check_bool_mask("mask", mask)
    return (~mask).to(dtype) * float("-inf")
