"""L12 advanced suite: quantization in half precision and float64, empty
tensors, chunked cache updates equal to token-by-token ones, eviction inside
generation keeping memory bounded, sparse attention masking different keys in
different layers, bad input for the eviction and sink caches.

Run: ./course test L12 --advanced
"""
import pytest
import torch

from coursekit.reference import minmax_groups_ref
from coursekit.testing import assert_rejects, randn
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
