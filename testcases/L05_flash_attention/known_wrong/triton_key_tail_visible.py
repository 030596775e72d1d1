"""The key tail not masked: the last tile's padding keys (offs_n >= Lk, loaded as 0) take part in the softmax
with score 0."""
MODULE = "flash_attention_triton"


@triton.jit
def _visible(pos_m, offs_n, Lk, window, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr):
    ok = offs_n[None, :] >= 0  # BUG: the padding keys past Lk of the last tile count (with score 0)
    if CAUSAL:
        ok = ok & (offs_n[None, :] <= pos_m[:, None])          # j <= p
    if WINDOWED:
        ok = ok & (pos_m[:, None] - offs_n[None, :] < window)  # p - j < W
    return ok
