"""Scales by 1/d instead of 1/sqrt(d): the variance argument misremembered."""
MODULE = "scaled_dot_product"


def attention_scale(head_dim):
    check_positive_int("head_dim", head_dim)
    return 1.0 / head_dim
