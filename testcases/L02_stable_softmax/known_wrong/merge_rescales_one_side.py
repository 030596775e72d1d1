"""Rescales only the old sum l_a to the new max, assuming the new block always holds the max."""
MODULE = "softmax"


def merge_stats(m_a, l_a, m_b, l_b):
    m = torch.maximum(m_a, m_b)
    m_safe = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    return m, l_a * torch.exp(m_a - m_safe) + l_b
