"""No guard for a running max of -inf: a row that sees no key computes exp(-inf - (-inf)) = NaN instead of 0."""
MODULE = "flash_attention"


def _finite_or_zero(m):
    return m  # BUG: -inf stays -inf, and s - m_new is NaN for rows with nothing visible yet
