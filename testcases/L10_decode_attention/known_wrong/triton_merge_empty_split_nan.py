"""Stage 2 does not guard the max: when every split of a row is empty, exp(-inf - (-inf)) = NaN."""
MODULE = "decode_attention_triton"


@triton.jit
def _merge_kernel(O_PART, LSE_PART, Out, LSE, S,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    """out = sum_s w_s out_s / sum_s w_s with w_s = exp(lse_s - max lse): exact, float32.
    One program per query row (b, h, i), row = (b * H + h) * Lq + i; the partials are
    (B, H, Lq, S, D) and (B, H, Lq, S) contiguous, out (B, H, Lq, D) and lse (B, H, Lq) too."""
    row = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < S
    # -- read S lse values and S partial outputs: S * (D + 1) float32, tiny next to the cache --
    lse_s = tl.load(LSE_PART + row * S + offs_s, mask=s_ok, other=float("-inf"))
    m = tl.max(lse_s, 0)
    m_safe = m  # BUG             # every split empty: weights 0, not NaN
    w = tl.math.exp2((lse_s - m_safe) * LOG2E)   # 0 for an empty split (lse -inf)
    total = tl.sum(w, 0)
    o = tl.load(O_PART + (row * S + offs_s[:, None]) * HEAD_DIM + offs_d[None, :],
                mask=s_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)   # (BLOCK_S, BLOCK_D)
    o = tl.where(w[:, None] > 0, o, 0.0)                       # an empty split contributes exactly nothing
    total_safe = tl.where(total == 0.0, 1.0, total)
    out = tl.sum(w[:, None] * o, 0) / total_safe              # (BLOCK_D,)
    lse = tl.where(total == 0.0, float("-inf"), m_safe + tl.log(total_safe))
    tl.store(Out + row * HEAD_DIM + offs_d, out.to(Out.dtype.element_ty), mask=offs_d < HEAD_DIM)
    tl.store(LSE + row, lse)
