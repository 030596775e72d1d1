"""Skips the input checks: bad lengths, dtypes and shapes give torch RuntimeErrors or silently wrong masks."""
MODULE = "masks"
CAUGHT_BY = "advanced"


def check_positive_int(name, value):
    pass


def _check_bool_mask(name, mask, dims=None):
    pass


def _is_int(value):
    return True
