"""The numbers the course's Triton kernels use, declared once for all of them.

They are tl.constexpr because a @triton.jit function may read a module global
only when it is one (Triton 3.6 refuses a plain Python float there); host code
reads the number as LOG2E.value. The kernels work in base 2: exp2 and log2 are
single instructions, exp and log are not."""
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # log2(e): exp(x) = exp2(x * log2(e))
LN2 = tl.constexpr(0.6931471805599453)    # ln(2): ln(y) = log2(y) * ln(2), e.g. an lse summed in log2 units
