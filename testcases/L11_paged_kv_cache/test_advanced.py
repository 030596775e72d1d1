"""L11 advanced suite: paged attention in half precision (scores and softmax in
float32, output in the input dtype) and on the GPU when there is one, a
longer random history for the allocator, and the Triton kernel on random
block tables (Hypothesis), a GQA group wider than one tile, strided and int64
arguments, bfloat16, and real sizes on a GPU.

Run: ./course test L11 --advanced
"""
import importlib.util
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coursekit.testing import assert_close, assert_within_eager_error, randn

# The basic suite's helpers (the reference gather, random layouts, the allocator machine), loaded from its file.
_spec = importlib.util.spec_from_file_location("l11_basic_helpers", Path(__file__).with_name("test_basic.py"))
_basic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_basic)
CacheMachine, contiguous_reference, random_layout = _basic.CacheMachine, _basic.contiguous_reference, _basic.random_layout
poisoned_layout, gathered_reference, PAGED_HINT = _basic.poisoned_layout, _basic.gathered_reference, _basic.PAGED_HINT


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


# ------------------------------------------------------------ Triton path --

def eager_paged(q, k_pages, v_pages, tables, lens):
    """The gather, then attention by plain PyTorch ops in q's dtype: the yardstick of the eager-error rule."""
    S, H, D = q.shape
    Hkv, bs = k_pages.shape[1], k_pages.shape[2]
    out = torch.zeros(S, H, D, dtype=q.dtype, device=q.device)
    for s in range(S):
        t = torch.arange(int(lens[s]), device=q.device)
        if t.numel() == 0:
            continue
        blocks = tables[s].long()[t // bs]
        k = k_pages[blocks, :, t % bs].transpose(0, 1).repeat_interleave(H // Hkv, 0)   # (H, n, D)
        v = v_pages[blocks, :, t % bs].transpose(0, 1).repeat_interleave(H // Hkv, 0)
        w = torch.softmax((q[s][:, None] @ k.transpose(-2, -1)) * D ** -0.5, dim=-1)   # (H, 1, n)
        out[s] = (w @ v)[:, 0]
    return out


@pytest.mark.triton
@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # triton_device is a constant string
@given(seed=st.integers(0, 10_000), block_size=st.sampled_from([1, 3, 4, 8, 16, 32]),
       kv_heads=st.sampled_from([1, 2]), group=st.sampled_from([1, 2, 4]), shared=st.integers(0, 3),
       data=st.data())
def test_triton_paged_random_block_tables(impl, triton_device, seed, block_size, kv_heads, group, shared, data):
    lens = data.draw(st.lists(st.integers(0, 50), min_size=1, max_size=4), label="lens")
    k_pages, v_pages, tables, seq_lens = poisoned_layout(seed, lens, block_size, kv_heads, 16, shared_blocks=shared,
                                                         device=triton_device)
    q = randn(len(lens), kv_heads * group, 16, seed=seed + 5, device=triton_device)
    out = impl.paged_attention_triton.triton_paged_attention(q, k_pages, v_pages, tables, seq_lens)
    assert_close(out, gathered_reference(q, k_pages, v_pages, tables, seq_lens), dtype=torch.float32,
                 what=f"triton_paged_attention (block_size {block_size}, Hkv {kv_heads}, G {group}, lengths {lens}, "
                      f"{shared} shared blocks)", hint=PAGED_HINT)


@pytest.mark.triton
def test_triton_paged_group_wider_than_one_tile_and_scale(impl, triton_device):
    # MQA with 128 query heads: the group's rows need two tiles of rows (grid axis 2)
    k_pages, v_pages, tables, seq_lens = poisoned_layout(30, [19, 4], 8, 1, 16, device=triton_device)
    q = randn(2, 128, 16, seed=31, device=triton_device)
    out = impl.paged_attention_triton.triton_paged_attention(q, k_pages, v_pages, tables, seq_lens, scale=0.3)
    assert_close(out, gathered_reference(q, k_pages, v_pages, tables, seq_lens, scale=0.3), dtype=torch.float32,
                 what="triton_paged_attention, 128 query heads over 1 KV head, scale 0.3",
                 hint="G = 128 rows need several row blocks: each maps its rows to heads hkv * G + row; "
                      "scale multiplies q k^T (default 1/sqrt(D))")


@pytest.mark.triton
def test_triton_paged_strided_and_int64_arguments(impl, triton_device):
    k_pages, v_pages, tables, seq_lens = poisoned_layout(32, [21, 9, 14], 4, 2, 16, device=triton_device)
    pool_k = torch.stack([torch.zeros_like(k_pages), k_pages])      # (num_layers, num_blocks, Hkv, bs, D)
    pool_v = torch.stack([torch.zeros_like(v_pages), v_pages])
    q = randn(4, 3, 16, seed=33, device=triton_device).transpose(0, 1)   # (3, 4, 16), not contiguous
    out = impl.paged_attention_triton.triton_paged_attention(q, pool_k[1], pool_v[1], tables.long(), seq_lens.long())
    assert_close(out, gathered_reference(q, k_pages, v_pages, tables, seq_lens), dtype=torch.float32,
                 what="triton_paged_attention with a strided q, a layer view of the pool and int64 tables and lengths",
                 hint="make q contiguous (or use its strides); accept any integer dtype for block_tables and seq_lens")


@pytest.mark.triton
def test_triton_paged_bfloat16_within_eager_error(impl, triton_device):
    if triton_device == "cpu":
        pytest.skip("the Triton interpreter does not emulate bfloat16 arithmetic (float16 is tested in the basic suite)")
    k_pages, v_pages, tables, seq_lens = poisoned_layout(34, [33, 10, 0], 16, 2, 32, dtype=torch.bfloat16,
                                                         device=triton_device)
    q = randn(3, 8, 32, seed=35, dtype=torch.bfloat16, device=triton_device)
    out = impl.paged_attention_triton.triton_paged_attention(q, k_pages, v_pages, tables, seq_lens)
    assert out.dtype == torch.bfloat16, f"out must keep bfloat16, got {out.dtype}"
    assert_within_eager_error(out, gathered_reference(q, k_pages, v_pages, tables, seq_lens),
                              eager_paged(q, k_pages.nan_to_num(0.0), v_pages.nan_to_num(0.0), tables, seq_lens),
                              what="triton_paged_attention bfloat16")


# ---------------------------------------------- on a CUDA GPU, real sizes --

@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("block_size", [16, 256])
@pytest.mark.parametrize("kv_heads", [8, 1], ids=["gqa", "mqa"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_triton_paged_gpu_decode_step(impl, block_size, kv_heads, dtype):
    lens = [5000, 1, 3111, 0, 256]
    gen = torch.Generator().manual_seed(40)
    num_blocks = sum(math.ceil(n / block_size) for n in lens) + 7
    tables = torch.full((len(lens), math.ceil(max(lens) / block_size)), -1, dtype=torch.int32)
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    for s, n in enumerate(lens):
        for j in range(math.ceil(n / block_size)):
            tables[s, j] = perm.pop()
    k_pages = randn(num_blocks, kv_heads, block_size, 128, seed=41, dtype=dtype, device="cuda")
    v_pages = randn(num_blocks, kv_heads, block_size, 128, seed=42, dtype=dtype, device="cuda")
    q = randn(len(lens), 32, 128, seed=43, dtype=dtype, device="cuda")
    tables, seq_lens = tables.cuda(), torch.tensor(lens, dtype=torch.int32, device="cuda")
    expected = gathered_reference(q, k_pages, v_pages, tables, seq_lens)
    eager = eager_paged(q, k_pages, v_pages, tables, seq_lens)
    # 5 sequences x Hkv programs is far below the H200's 132 SMs: the kernel splits the keys (and merges)
    out = impl.paged_attention_triton.triton_paged_attention(q, k_pages, v_pages, tables, seq_lens)
    assert_within_eager_error(out, expected, eager, what=f"out (Hkv={kv_heads}, block_size {block_size}, {dtype})",
                              hint=PAGED_HINT)
