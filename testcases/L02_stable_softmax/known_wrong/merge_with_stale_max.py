"""Rescales the new block's sum by the old max instead of the new one: right while the old part holds the max."""
MODULE = "softmax"


def merge_stats(m_a, l_a, m_b, l_b):
    m = torch.maximum(m_a, m_b)
    m_safe = _finite_or_zero(m)
    m_a_safe = _finite_or_zero(m_a)
    return m, l_a * torch.exp(m_a - m_safe) + l_b * torch.exp(m_b - m_a_safe)
