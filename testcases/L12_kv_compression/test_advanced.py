"""L12 advanced suite: quantization in half precision and float64, empty
tensors, chunked cache updates equal to token-by-token ones, eviction inside
generation keeping memory bounded, sparse attention masking different keys in
different layers, bad input for the eviction and sink caches; the quantized
decode kernel in float16 (interpreter or GPU), and on a GPU at real sizes
(bfloat16, H = 32, D = 128, T = 5000) with its peak memory.

Run: ./course test L12 --advanced
"""
import pytest
import torch

from coursekit.reference import decode_attention_ref, decode_visible_ref, minmax_groups_ref, random_codes_ref
from coursekit.testing import assert_close, assert_rejects, assert_within_eager_error, randn
from coursekit.training import make_model

pytestmark = pytest.mark.advanced


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16, torch.float64))
@pytest.mark.parametrize("bits", (8, 4))
def test_quantize_keeps_dtype_and_bound(impl, dtype, bits):
    x = randn(4, 7, 24, seed=11).to(dtype) * 3 + 1
    qx = impl.kv_quant.quantize(x, bits, -1, 8)
    got = impl.kv_quant.dequantize(qx)
    assert got.dtype == dtype, f"dequantize returned {got.dtype}, expected the input's {dtype}"
    _, scale = minmax_groups_ref(x, bits, -1, 8)
    eps = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}[dtype]
    err = (got.double() - x.double()).abs()
    allowed = scale / 2 + eps * (1 + x.double().abs()) * 2
    assert bool((err <= allowed).all()), (f"{dtype}: error {float(err.max()):.3g} beyond scale/2 plus a rounding of "
                                          "the stored scale/zero: compute the statistics in float32")


def test_empty_tensor_round_trips(impl):
    x = torch.zeros(3, 0, 4)
    got = impl.kv_quant.dequantize(impl.kv_quant.quantize(x, 4, 1))
    assert got.shape == (3, 0, 4), f"an empty tensor came back as {tuple(got.shape)}"


def test_chunked_updates_equal_token_by_token(impl):
    B, H, D, T = 1, 2, 8, 29
    k, v = randn(B, H, T, D, seed=12), randn(B, H, T, D, seed=13)
    one = impl.kv_quant.QuantizedKVCache(B, H, T, D, bits=4, residual=5, group_size=4)
    many = impl.kv_quant.QuantizedKVCache(B, H, T, D, bits=4, residual=5, group_size=4)
    for t in range(T):
        k1, v1 = one.update(k[:, :, t:t + 1], v[:, :, t:t + 1])
    n = 0
    for c in (7, 1, 13, 8):
        k2, v2 = many.update(k[:, :, n:n + c], v[:, :, n:n + c])
        n += c
    assert torch.equal(k1, k2) and torch.equal(v1, v2), (
        "the same tokens in different chunks gave different caches: which tokens are quantized must depend on "
        "seq_len alone, with key groups at fixed token offsets [0, G), [G, 2G), ...")
    assert one.nbytes == many.nbytes
    one.reset()
    assert one.seq_len == 0 and one.update(k[:, :, :1], v[:, :, :1])[0].shape == (B, H, 1, D), "reset"


def test_generation_with_eviction_is_bounded(impl):
    model = make_model(impl, 48, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2).eval()
    ids = torch.randint(0, 48, (1, 12), generator=torch.Generator().manual_seed(3))
    out, stats = impl.kv_eviction.generate_with_retention(model, ids, 20, capacity=8, num_sink=2)
    assert out.shape == (1, 32), f"generated {tuple(out.shape)}"
    assert stats["memory_tokens"] <= 9, (f"with capacity 8 a query sees at most 8 cached keys + itself, "
                                         f"memory_tokens = {stats['memory_tokens']}")


def test_sparse_masks_differ_between_layers(impl):
    E = impl.kv_eviction
    caches = [E.RetentionKVCache(1, 1, 6, 2) for _ in range(2)]
    for c in caches:
        c.append(randn(1, 1, 6, 2), randn(1, 1, 6, 2, seed=1), 5)
    caches[0].reinforce(torch.full((1, 6), 0.5), 40)  # layer 0 attended to everything at t = 40
    masks = E.sparse_attention_masks([c.retention(45) for c in caches], 0.01)
    assert bool(masks[0].all()) and not bool(masks[1].any()), (
        f"layer 0 (recently attended) must keep all its keys and layer 1 (idle for 40 steps) none; got "
        f"{masks[0].tolist()} and {masks[1].tolist()}: one mask per layer, from that layer's retention")


def test_eviction_and_sinks_bad_input(impl):
    E = impl.kv_eviction
    assert_rejects(lambda: E.RetentionKVCache(1, 1, 0, 2), "capacity")
    assert_rejects(lambda: E.RetentionKVCache(1, 1, 4, 2, num_sink=4), "num_sink")
    assert_rejects(lambda: E.ForgettingCurve(initial_strength=0.0), "initial_strength")
    assert_rejects(lambda: E.SinkKVCache(1, 1, -1, 4, 2), "num_sink")
    assert_rejects(lambda: E.SinkKVCache(1, 1, 2, 0, 2), "recent")
    sink = E.SinkKVCache(1, 1, 1, 3, 2)
    sink.update(randn(1, 1, 4, 2), randn(1, 1, 4, 2))
    assert_rejects(lambda: sink.update(randn(1, 2, 1, 2), randn(1, 2, 1, 2)), "k", "heads")
    assert sink.seq_len == 4 and sink.nbytes == 2 * (1 + 2) * 2 * 4, "sinks hold num_sink + recent - 1 tokens"


# ------------------------------------------- the quantized decode kernel --

def quantized(impl, shape, bits, dim, group_size, seed, dtype, device):
    """(QuantizedTensor on device, x_hat float64 on the CPU), built without quantize."""
    fields, x_hat = random_codes_ref(shape, bits, dim, group_size, seed=seed, dtype=dtype)
    fields.update(codes=fields["codes"].to(device), scale=fields["scale"].to(device), zero=fields["zero"].to(device))
    return impl.kv_quant.QuantizedTensor(**fields), x_hat


def eager_decode(q, k, v, kv_lens):
    """Plain PyTorch in q's dtype over the dequantized cache (rounded to q's dtype): the yardstick of
    coursekit.testing.EAGER_FACTOR."""
    group = q.shape[1] // k.shape[1]
    k, v = (x.to(q.device, q.dtype).repeat_interleave(group, dim=1) for x in (k, v))
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, Lq, D) @ (B, H, D, T) -> (B, H, Lq, T)
    visible = decode_visible_ref(kv_lens.cpu(), q.shape[2], k.shape[2], device=q.device)[:, None]
    return torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1).nan_to_num(0.0) @ v


@pytest.mark.triton
@pytest.mark.parametrize("bits", (8, 4))
def test_quantized_kernel_float16_within_eager_error(impl, triton_device, bits):
    B, H, Hkv, T, D = 2, 4, 2, 40, 16
    q = randn(B, H, 1, D, seed=100, dtype=torch.float16, device=triton_device)
    k, k_hat = quantized(impl, (B, Hkv, T, D), bits, -2, 16, 101, torch.float16, triton_device)
    v, v_hat = quantized(impl, (B, Hkv, T, D), bits, -1, None, 102, torch.float16, triton_device)
    kv_lens = torch.tensor([40, 23], device=triton_device)
    out, lse = impl.kv_quant_triton.triton_quantized_decode_attention(q, k, v, kv_lens=kv_lens, num_splits=3)
    assert out.dtype == torch.float16 and lse.dtype == torch.float32, (
        f"float16 q gives a float16 out and a float32 lse, got {out.dtype} and {lse.dtype}")
    want_out, want_lse = decode_attention_ref(q.cpu(), k_hat, v_hat, kv_lens.cpu())
    assert_within_eager_error(out, want_out, eager_decode(q, k_hat, v_hat, kv_lens), what=f"int{bits} float16 out",
                              hint="dequantize in float32 (code * scale + zero), round to q's dtype only for tl.dot")
    assert_close(lse, want_lse, dtype=torch.float16, what=f"int{bits} float16 lse")


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("bits", (8, 4))
def test_quantized_kernel_gpu_decode_step(impl, bits):
    # Real sizes: H = 32, Hkv = 8, D = 128, bfloat16, keys in groups of 128 tokens (one group per 64-key
    # tile) and of 48 (groups that straddle tiles), a ragged batch, forced and chosen split counts.
    B, H, Hkv, T, D = 3, 32, 8, 5000, 128
    q = randn(B, H, 1, D, seed=110, dtype=torch.bfloat16, device="cuda")
    v, v_hat = quantized(impl, (B, Hkv, T, D), bits, -1, None, 112, torch.bfloat16, "cuda")
    kv_lens = torch.tensor([5000, 1, 3111], device="cuda")
    for key_group in (128, 48):
        k, k_hat = quantized(impl, (B, Hkv, T, D), bits, -2, key_group, 111, torch.bfloat16, "cuda")
        want_out, want_lse = decode_attention_ref(q.cpu(), k_hat, v_hat, kv_lens.cpu())
        eager = eager_decode(q, k_hat, v_hat, kv_lens)
        for num_splits in (None, 1, 7):
            out, lse = impl.kv_quant_triton.triton_quantized_decode_attention(q, k, v, kv_lens=kv_lens,
                                                                              num_splits=num_splits)
            what = f"int{bits}, key groups of {key_group}, num_splits={num_splits}"
            assert_within_eager_error(out, want_out, eager, what=f"out ({what})")
            assert_close(lse, want_lse, dtype=torch.bfloat16, what=f"lse ({what})")


@pytest.mark.gpu
@pytest.mark.triton
def test_quantized_kernel_gpu_memory_is_the_partials_only(impl):
    # The kernel allocates out, lse and the split partials: a dequantized bfloat16 copy of K alone would be
    # B * Hkv * T * D * 2 bytes, far more.
    B, H, Hkv, T, D = 2, 32, 8, 32768, 128
    q = randn(B, H, 1, D, seed=120, dtype=torch.bfloat16, device="cuda")
    k, _ = quantized(impl, (B, Hkv, T, D), 4, -2, 128, 121, torch.bfloat16, "cuda")
    v, _ = quantized(impl, (B, Hkv, T, D), 4, -1, None, 122, torch.bfloat16, "cuda")
    impl.kv_quant_triton.triton_quantized_decode_attention(q, k, v)  # compile outside the measurement
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    impl.kv_quant_triton.triton_quantized_decode_attention(q, k, v)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    float_k = B * Hkv * T * D * 2
    assert extra < float_k / 16, (f"the call allocated {extra} bytes at its peak; a bfloat16 copy of the keys is "
                                  f"{float_k}: dequantize tile by tile in registers, never the whole cache")


@pytest.mark.triton
@pytest.mark.parametrize("bits", (8, 4))
def test_quantized_kernel_folded_statistics(impl, triton_device, bits):
    # The reference kernel can fold the statistics into q and p (kv_quant_triton.FOLD_STATISTICS, README section 8,
    # exercise 5) where a key tile lies in one group (groups of 128 tokens: a multiple of the 16-key interpreter
    # tiles and of the GPU's 64- or 128-key tiles) and a value token has one group. It must give the same attention.
    kt = impl.kv_quant_triton
    if not hasattr(kt, "FOLD_STATISTICS"):
        pytest.skip("this implementation has no FOLD_STATISTICS switch (exercise 5)")
    B, H, Hkv, T, D = 2, 4, 2, 300, 16
    q = randn(B, H, 1, D, seed=130, device=triton_device)
    k, k_hat = quantized(impl, (B, Hkv, T, D), bits, -2, 128, 131, torch.float32, triton_device)
    v, v_hat = quantized(impl, (B, Hkv, T, D), bits, -1, None, 132, torch.float32, triton_device)
    kv_lens = torch.tensor([300, 170], device=triton_device)
    kt.FOLD_STATISTICS = True
    try:
        out, lse = kt.triton_quantized_decode_attention(q, k, v, kv_lens=kv_lens, num_splits=2)
    finally:
        kt.FOLD_STATISTICS = False
    want_out, want_lse = decode_attention_ref(q.cpu(), k_hat, v_hat, kv_lens.cpu())
    hint = "q . (c s + z) = (q * s) . c + q . z per key tile; sum_n p_n (c_n s_n + z_n) = (p * s) @ c + p @ z"
    assert_close(out, want_out, what=f"int{bits} out, statistics folded", hint=hint)
    assert_close(lse, want_lse, what=f"int{bits} lse, statistics folded", hint=hint)
