"""naive_softmax subtracts the max: correct numbers, but the lesson's baseline no longer shows the overflow."""
MODULE = "softmax"
CAUGHT_BY = "advanced"


def naive_softmax(x, dim=-1):
    return stable_softmax(x, dim)
