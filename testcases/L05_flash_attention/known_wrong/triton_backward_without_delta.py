"""Backward without the D term: dS = P * dP instead of P * (dP - rowsum(dO * O))."""
MODULE = "flash_attention_triton"
CAUGHT_BY = "advanced"  # the Triton backward is graded in the advanced suite only


@triton.jit
def _bwd_preprocess(Out, dOut, Delta, stride_ob, stride_oh, stride_om, stride_dob, stride_doh, stride_dom,
                    H, Lq, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    off_bh = tl.program_id(1)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    tl.store(Delta + off_bh * Lq + offs_m, tl.zeros([BLOCK_M], dtype=tl.float32), mask=offs_m < Lq)
