"""Computes the scores in the input dtype: float16 dot products past 65504 become inf, then NaN."""
MODULE = "scaled_dot_product"


def compute_dtype(dtype):
    return dtype
