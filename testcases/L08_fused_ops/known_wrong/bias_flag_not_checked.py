"""The modules take bias by truthiness and never check it: bias="no" or bias=1 silently builds a bias, bias=None none."""
MODULE = "fused_ops"
CAUGHT_BY = "advanced"


def _check_bias_flag(bias):
    pass
