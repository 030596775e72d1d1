"""Adds the two running sums without rescaling them to the common max."""
MODULE = "softmax"


def merge_stats(m_a, l_a, m_b, l_b):
    return torch.maximum(m_a, m_b), l_a + l_b
