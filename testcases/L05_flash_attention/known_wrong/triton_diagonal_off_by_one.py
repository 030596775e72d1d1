"""The diagonal masked off by one: j < p instead of j <= p, so a query never sees its own key."""
MODULE = "flash_attention_triton"


@triton.jit
def _visible(pos_m, offs_n, Lk, window, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr):
    ok = offs_n[None, :] < Lk
    if CAUSAL:
        ok = ok & (offs_n[None, :] < pos_m[:, None])
    if WINDOWED:
        ok = ok & (pos_m[:, None] - offs_n[None, :] < window)
    return ok
