"""No check of dropout_p: 1.5 or -0.1 reach F.dropout, which raises a bare error or drops nothing."""
MODULE = "scaled_dot_product"
CAUGHT_BY = "advanced"


def check_probability(name, p):
    pass
