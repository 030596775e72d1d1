"""Reads training and return_weights by truthiness: training="no" turns dropout on, return_weights=1 returns a tuple."""
MODULE = "scaled_dot_product"
CAUGHT_BY = "advanced"


def check_flag(name, value):
    pass
