"""The Triton interpreter (TRITON_INTERPRET=1) runs kernels on CPU tensors with
the installed torch/triton pair: the course's Triton lessons rely on it on
machines without a GPU."""
import os
import subprocess
import sys

import pytest

from coursekit import COURSE_ROOT

pytest.importorskip("triton", reason="triton is not installed (Linux only)")

# The kernel runs in a fresh interpreter: Triton reads TRITON_INTERPRET when a
# kernel is decorated, and this process may have imported Triton already.
SCRIPT = """
import torch
import triton
import triton.language as tl


@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_range = offsets < n
    x = tl.load(x_ptr + offsets, mask=in_range)
    y = tl.load(y_ptr + offsets, mask=in_range)
    tl.store(out_ptr + offsets, x + y, mask=in_range)


n, block = 1000, 256  # the last program covers a partial block
x = torch.randn(n, generator=torch.Generator().manual_seed(0))
y = torch.randn(n, generator=torch.Generator().manual_seed(1))
out = torch.full_like(x, float("nan"))
add_kernel[(triton.cdiv(n, block),)](x, y, out, n, BLOCK=block)
assert out.device.type == "cpu"
assert torch.equal(out, x + y), (out - (x + y)).abs().max()
print("interpreted kernel ok")
"""


def test_triton_kernel_runs_on_cpu_tensors_under_the_interpreter():
    run = subprocess.run([sys.executable, "-c", SCRIPT], cwd=COURSE_ROOT, capture_output=True, text=True,
                         env=dict(os.environ, TRITON_INTERPRET="1"), timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "interpreted kernel ok" in run.stdout
