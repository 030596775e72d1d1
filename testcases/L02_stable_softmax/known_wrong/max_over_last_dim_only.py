"""Ignores `dim`: always normalises over the last dim."""
MODULE = "softmax"

_reference_softmax = stable_softmax


def stable_softmax(x, dim=-1):
    return _reference_softmax(x, -1)
