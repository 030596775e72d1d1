"""L11 advanced suite: paged attention in half precision (scores and softmax in
float32, output in the input dtype) and on the GPU when there is one, and a
longer random history for the allocator.

Run: ./course test L11 --advanced
"""
import importlib.util
import math
from pathlib import Path

import pytest
import torch

from coursekit.testing import assert_within_eager_error, randn

# The basic suite's helpers (the reference gather, random layouts, the allocator machine), loaded from its file.
_spec = importlib.util.spec_from_file_location("l11_basic_helpers", Path(__file__).with_name("test_basic.py"))
_basic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_basic)
CacheMachine, contiguous_reference, random_layout = _basic.CacheMachine, _basic.contiguous_reference, _basic.random_layout


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_paged_attention_half_precision(impl, device, dtype):
    num_seqs, bs, max_len, Hkv, group, D = 6, 16, 200, 2, 4, 64
    num_blocks = num_seqs * math.ceil(max_len / bs) + 1
    tables, lens = random_layout(7, num_seqs, bs, num_blocks, max_len, share=True)
    k_pages = randn(num_blocks, Hkv, bs, D, seed=1, dtype=dtype, device=device)
    v_pages = randn(num_blocks, Hkv, bs, D, seed=2, dtype=dtype, device=device)
    q = randn(num_seqs, Hkv * group, D, seed=3, dtype=dtype, device=device)
    out = impl.paged_kv_cache.paged_attention(q, k_pages, v_pages, tables.to(device), lens.to(device))
    assert out.dtype == dtype, f"{dtype} in, {out.dtype} out: the output keeps the input dtype"
    expected = contiguous_reference(q.cpu().double(), k_pages.cpu().double(), v_pages.cpu().double(), tables, lens)
    # eager: the same gather, then attention by plain ops in dtype (scores and softmax rounded to dtype)
    eager = torch.zeros(num_seqs, Hkv * group, D, dtype=dtype)
    for s in range(num_seqs):
        n = int(lens[s])
        if n:
            idx = [(int(tables[s, t // bs]), t % bs) for t in range(n)]
            k = torch.stack([k_pages[b, :, o].cpu() for b, o in idx], 1).repeat_interleave(group, 0)
            v = torch.stack([v_pages[b, :, o].cpu() for b, o in idx], 1).repeat_interleave(group, 0)
            w = torch.softmax((q[s].cpu()[:, None] @ k.transpose(-2, -1)) / math.sqrt(D), dim=-1)
            eager[s] = (w @ v)[:, 0]
    assert_within_eager_error(out, expected, eager, what=f"paged_attention ({dtype})",
                              hint="compute scores and softmax in float32 for half inputs; cast only the output")


def test_allocator_long_random_history(impl):
    from hypothesis import HealthCheck, settings
    machine = type("LongMachine", (CacheMachine,), {"impl": impl})
    machine.TestCase.settings = settings(max_examples=15, stateful_step_count=80, deadline=None, derandomize=True,
                                         database=None, suppress_health_check=list(HealthCheck))
    machine.TestCase().runTest()
