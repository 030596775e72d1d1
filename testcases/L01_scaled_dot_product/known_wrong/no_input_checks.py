"""Skips the input checks: bad shapes surface as torch RuntimeErrors (or wrong answers), not named errors."""
MODULE = "scaled_dot_product"
CAUGHT_BY = "advanced"


def check_qk(q, k):
    pass


def check_qkv(q, k, v):
    pass


def check_mask(mask, scores_shape, device):
    pass
