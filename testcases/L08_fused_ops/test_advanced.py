"""L08 advanced suite: random shapes (Hypothesis), bias=False, half precision,
repeated calls and gradient accumulation, odd inputs (strided, 1-D, 4-D),
LayerNorms without affine, the saved memory of a whole MLP block, and the
Triton kernels on random shapes, shifted logits, empty tensors and inputs that
require grad.

Run: ./course test L08 --advanced
"""
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coursekit.reference import layer_norm_ref, module_chain_ref, softmax_ref
from coursekit.testing import assert_close, assert_no_nan, assert_rejects, randn


# ----------------------------------------------------------------- helpers --

def seeded_modules(kind, in_features, out_features, seed, bias=True, dtype=torch.float64, device="cpu",
                   approximate="none"):
    """Unfused torch modules with seeded weights (random gamma, beta for the LayerNorm)."""
    gen = torch.Generator().manual_seed(seed)
    linear = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_features, in_features, generator=gen) / in_features ** 0.5)
        if bias:
            linear.bias.copy_(0.5 * torch.randn(out_features, generator=gen))
    if kind == "ln":
        first = nn.LayerNorm(in_features)
        with torch.no_grad():
            first.weight.copy_(1.0 + 0.5 * torch.randn(in_features, generator=gen))
            first.bias.copy_(0.5 * torch.randn(in_features, generator=gen))
    else:
        first = nn.GELU(approximate=approximate)
    return first.to(device=device, dtype=dtype), linear.to(device=device, dtype=dtype)


def fuse(impl, kind, first, linear, approximate="none"):
    if kind == "ln":
        return impl.fused_ops.FusedLayerNormLinear.from_modules(first, linear)
    return impl.fused_ops.FusedGELULinear.from_modules(linear, approximate=approximate)


def check_against_reference(fused, modules, x, grad_out, dtype, hint=""):
    """Output, input gradient and every parameter gradient vs the unfused pair in
    float64. Fused parameters are matched to the originals by value (from_modules copies)."""
    x = x.detach().clone().requires_grad_(True)
    y = fused(x)
    y.backward(grad_out)
    y_ref, grad_x_ref, grads_ref = module_chain_ref(modules, x, grad_out)
    assert_close(y, y_ref, dtype=dtype, what="fused output", hint=hint)
    assert_close(x.grad, grad_x_ref, dtype=dtype, what="grad of the input", hint=hint)
    fused_params = list(fused.parameters())
    assert len(fused_params) == len(grads_ref), (
        f"the fused module has {len(fused_params)} parameters, the unfused modules {len(grads_ref)}: "
        "bias=False must leave the linear layer without a bias")
    unmatched = list(grads_ref)
    for p in fused_params:
        match = next((i for i, (q, _) in enumerate(unmatched)
                      if q.shape == p.shape and torch.equal(q.detach(), p.detach())), None)
        assert match is not None, f"a fused parameter of shape {tuple(p.shape)} matches no original parameter"
        _, grad_ref = unmatched.pop(match)
        assert p.grad is not None, f"the fused parameter of shape {tuple(p.shape)} got no gradient"
        assert_close(p.grad, grad_ref, dtype=dtype, what=f"grad of a fused parameter of shape {tuple(p.shape)}",
                     hint=hint)


def saved_bytes(fn):
    """Bytes of the distinct storages saved for backward while fn() runs (parameters included)."""
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), out


KINDS = [("ln", "none"), ("gelu", "none"), ("gelu", "tanh")]
KIND_IDS = ["layer_norm_linear", "gelu_linear", "gelu_tanh_linear"]


# ------------------------------------------------------- random shapes --

@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(lead=st.lists(st.integers(1, 4), min_size=0, max_size=3), in_features=st.integers(1, 24),
       out_features=st.integers(1, 9), bias=st.booleans(), kind=st.sampled_from(KINDS),
       seed=st.integers(0, 2**16))
def test_random_shapes_match_unfused(impl, lead, in_features, out_features, bias, kind, seed):
    name, approximate = kind
    first, linear = seeded_modules(name, in_features, out_features, seed, bias=bias, approximate=approximate)
    fused = fuse(impl, name, first, linear, approximate)
    x = randn(*lead, in_features, seed=seed + 1, dtype=torch.float64, scale=2.0)
    grad_out = randn(*lead, out_features, seed=seed + 2, dtype=torch.float64)
    check_against_reference(fused, [first, linear], x, grad_out, torch.float64,
                            hint=f"{name}, approximate={approximate}, x {tuple(x.shape)}, out {out_features}, "
                                 f"bias={bias} (flatten every leading dim into tokens; in_features=1 is allowed)")


# --------------------------------------------------------------- bias --

@pytest.mark.parametrize("kind,approximate", KINDS, ids=KIND_IDS)
def test_bias_false(impl, device, kind, approximate):
    first, linear = seeded_modules(kind, 12, 7, seed=100, bias=False, device=device, approximate=approximate)
    fused = fuse(impl, kind, first, linear, approximate)
    check_against_reference(fused, [first, linear], randn(3, 5, 12, seed=101, dtype=torch.float64, device=device),
                            randn(3, 5, 7, seed=102, dtype=torch.float64, device=device), torch.float64,
                            hint="bias=False: no bias parameter, nothing added, and backward returns None for it")
    plain = (impl.fused_ops.FusedLayerNormLinear(12, 7, bias=False) if kind == "ln"
             else impl.fused_ops.FusedGELULinear(12, 7, bias=False, approximate=approximate))
    reference_count = len(list(first.parameters())) + 1
    assert len(list(plain.parameters())) == reference_count, (
        f"{type(plain).__name__}(12, 7, bias=False) has {len(list(plain.parameters()))} parameters, expected "
        f"{reference_count}: no bias")


@pytest.mark.parametrize("kind,approximate", KINDS, ids=KIND_IDS)
def test_bias_false_saves_the_same_difference(impl, kind, approximate):
    first, linear = seeded_modules(kind, 12, 7, seed=103, bias=False, dtype=torch.float32, approximate=approximate)
    fused = fuse(impl, kind, first, linear, approximate)
    x = randn(4, 6, 12, seed=104, requires_grad=True)
    unfused_bytes, _ = saved_bytes(lambda: linear(first(x)))
    fused_bytes, _ = saved_bytes(lambda: fused(x))
    assert unfused_bytes - fused_bytes == x.numel() * 4, (
        f"with bias=False the fused module should still save N * in * 4 = {x.numel() * 4} bytes less, saved "
        f"{unfused_bytes - fused_bytes} less")


# ----------------------------------------------------- half precision --

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("kind,approximate", KINDS, ids=KIND_IDS)
def test_half_precision_forward(impl, device, dtype, kind, approximate):
    first, linear = seeded_modules(kind, 20, 13, seed=110, dtype=dtype, device=device, approximate=approximate)
    fused = fuse(impl, kind, first, linear, approximate)
    x = randn(3, 7, 20, seed=111, dtype=dtype, device=device, scale=2.0)
    y = fused(x)
    assert y.dtype == dtype, f"output dtype {y.dtype}, expected {dtype}"
    assert_no_nan(y)
    expected, _, _ = module_chain_ref([first, linear], x)
    assert_close(y, expected, dtype=dtype, hint=(
        f"{dtype}: compute the LayerNorm statistics and GELU in float32 (compute_dtype) and cast the "
        "activation back to the input dtype before the linear layer, as nn.LayerNorm and nn.GELU do"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_backward_runs(impl, dtype):
    first, linear = seeded_modules("ln", 20, 13, seed=112, dtype=dtype)
    fused = fuse(impl, "ln", first, linear)
    x = randn(5, 20, seed=113, dtype=dtype, requires_grad=True)
    fused(x).sum().backward()
    assert x.grad is not None and x.grad.dtype == dtype, "the input gradient should have the input's dtype"
    for p in fused.parameters():
        assert p.grad is not None and p.grad.dtype == dtype, (
            f"a parameter of shape {tuple(p.shape)} got a gradient of dtype "
            f"{None if p.grad is None else p.grad.dtype}, expected {dtype}")
    _, grad_x_ref, _ = module_chain_ref([first, linear], x)
    assert_close(x.grad, grad_x_ref, dtype=dtype, what="grad of the input")


# ------------------------------------------- repeated calls, accumulation --

@pytest.mark.parametrize("kind,approximate", KINDS, ids=KIND_IDS)
def test_two_calls_accumulate_gradients(impl, kind, approximate):
    # Two forwards through the same module (two sets of saved tensors), one
    # backward through a loss of both; then all of it again: .grad accumulates.
    first, linear = seeded_modules(kind, 10, 6, seed=120, approximate=approximate)
    fused = fuse(impl, kind, first, linear, approximate)
    x1 = randn(4, 10, seed=121, dtype=torch.float64, requires_grad=True)
    x2 = randn(3, 4, 10, seed=122, dtype=torch.float64, requires_grad=True)
    for _ in range(2):
        (fused(x1).square().sum() + fused(x2).sum()).backward()

    y1_ref = module_chain_ref([first, linear], x1)[0]
    _, grad_x1, grads1 = module_chain_ref([first, linear], x1, 2 * y1_ref)  # d/dy of sum(y^2) = 2y
    _, grad_x2, grads2 = module_chain_ref([first, linear], x2)
    hint = ("backward returns gradients and autograd adds them to .grad: do not write .grad yourself, and keep "
            "no state between calls on the module or the Function (everything a backward needs goes in ctx)")
    assert_close(x1.grad, 2 * grad_x1, what="grad of x1 after two backward passes", hint=hint)
    assert_close(x2.grad, 2 * grad_x2, what="grad of x2 after two backward passes", hint=hint)
    for p in fused.parameters():
        i = next(i for i, (q, _) in enumerate(grads1) if q.shape == p.shape and torch.equal(q.detach(), p.detach()))
        assert_close(p.grad, 2 * (grads1[i][1] + grads2[i][1]), hint=hint,
                     what=f"accumulated grad of the fused parameter of shape {tuple(p.shape)}")


def test_backward_twice_with_retain_graph(impl):
    first, linear = seeded_modules("ln", 10, 6, seed=123)
    fused = fuse(impl, "ln", first, linear)
    x = randn(5, 10, seed=124, dtype=torch.float64, requires_grad=True)
    y = fused(x).sum()
    y.backward(retain_graph=True)
    g = x.grad.clone()
    y.backward()
    assert_close(x.grad, 2 * g, hint="a retained graph can be backpropagated twice: backward must not change "
                                     "the saved tensors in place")


# ------------------------------------------------------------ odd inputs --

@pytest.mark.parametrize("kind,approximate", KINDS, ids=KIND_IDS)
def test_strided_and_unusual_ranks(impl, kind, approximate):
    first, linear = seeded_modules(kind, 8, 5, seed=130, approximate=approximate)
    fused = fuse(impl, kind, first, linear, approximate)
    base = randn(8, 6, 3, seed=131, dtype=torch.float64)
    cases = {"transposed 3-D": base.permute(2, 1, 0), "1-D": randn(8, seed=132, dtype=torch.float64),
             "4-D": randn(2, 3, 2, 8, seed=133, dtype=torch.float64)}
    for name, x in cases.items():
        grad_out = randn(*x.shape[:-1], 5, seed=134, dtype=torch.float64)
        check_against_reference(fused, [first, linear], x, grad_out, torch.float64,
                                hint=f"{name} input {tuple(x.shape)}: use reshape (not view) to flatten the "
                                     "leading dims, and give the input gradient x's shape")
        fused.zero_grad()


@pytest.mark.parametrize("affine", ["no_affine", "no_bias"])
def test_from_modules_layer_norm_without_affine(impl, affine):
    ln = nn.LayerNorm(9, elementwise_affine=False) if affine == "no_affine" else nn.LayerNorm(9, bias=False)
    ln = ln.double()
    if ln.weight is not None:
        with torch.no_grad():
            ln.weight.copy_(1.0 + randn(9, seed=140, dtype=torch.float64))
    _, linear = seeded_modules("gelu", 9, 4, seed=141)
    fused = impl.fused_ops.FusedLayerNormLinear.from_modules(ln, linear)
    x = randn(6, 9, seed=142, dtype=torch.float64, requires_grad=True)
    y = fused(x)
    expected, grad_x, _ = module_chain_ref([ln, linear], x)
    assert_close(y, expected, hint="a LayerNorm without elementwise affine computes gamma = 1, beta = 0")
    y.backward(torch.ones_like(y))
    assert_close(x.grad, grad_x, what="grad of the input")


def test_from_modules_keeps_dtype_and_eps(impl):
    torch.manual_seed(144)
    ln, linear = nn.LayerNorm(6, eps=1e-3).double(), nn.Linear(6, 3).double()
    fused = impl.fused_ops.FusedLayerNormLinear.from_modules(ln, linear)
    assert all(p.dtype == torch.float64 for p in fused.parameters()), (
        "from_modules should give the fused module the originals' dtype (float64 here)")
    x = randn(4, 6, seed=143, dtype=torch.float64, scale=0.01)  # tiny variance: eps = 1e-3 dominates it
    assert_close(fused(x), linear(ln(x)), hint="take eps from the LayerNorm (1e-3 here, not the default 1e-5)")


def test_eps_zero_is_allowed(impl):
    # eps = 0 is a valid LayerNorm (as nn.LayerNorm and F.layer_norm): rstd = 1 / sqrt(var).
    first, linear = seeded_modules("ln", 10, 6, seed=145)
    ln = nn.LayerNorm(10, eps=0.0).double()
    with torch.no_grad():
        ln.weight.copy_(first.weight)
        ln.bias.copy_(first.bias)
    fused = impl.fused_ops.FusedLayerNormLinear.from_modules(ln, linear)
    check_against_reference(fused, [ln, linear], randn(3, 4, 10, seed=146, dtype=torch.float64),
                            randn(3, 4, 6, seed=147, dtype=torch.float64), torch.float64,
                            hint="eps = 0 is allowed (as in nn.LayerNorm): only a negative or non-finite eps is an error")
    plain = impl.fused_ops.FusedLayerNormLinear(10, 6, eps=0.0)
    assert plain.eps == 0.0, f"FusedLayerNormLinear(10, 6, eps=0.0).eps = {plain.eps!r}, expected 0.0"


@pytest.mark.parametrize("kind,approximate", KINDS, ids=KIND_IDS)
def test_zero_tokens(impl, kind, approximate):
    # An empty batch is valid: (0, in) -> (0, out), and the gradients of the parameters are zero.
    first, linear = seeded_modules(kind, 8, 5, seed=148, approximate=approximate)
    fused = fuse(impl, kind, first, linear, approximate)
    x = torch.zeros(0, 3, 8, dtype=torch.float64, requires_grad=True)
    y = fused(x)
    assert tuple(y.shape) == (0, 3, 5), f"zero tokens in: output shape {tuple(y.shape)}, expected (0, 3, 5)"
    y.sum().backward()
    assert x.grad is not None and tuple(x.grad.shape) == (0, 3, 8), "the input gradient has the input's (empty) shape"
    for p in fused.parameters():
        assert p.grad is not None, f"a parameter of shape {tuple(p.shape)} got no gradient from an empty batch"
        assert_close(p.grad, torch.zeros_like(p), what=f"grad of a parameter of shape {tuple(p.shape)}",
                     hint="a sum over zero tokens is 0")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_statistics_in_float32(impl, dtype):
    # Rows around 60 with unit spread: a float16 (bfloat16) sum of 64 such values is
    # ~3840, where the spacing is 2 (16), so a mean and variance taken in the input
    # dtype are off by several percent of the spread. In float32 they are exact enough.
    first, linear = seeded_modules("ln", 64, 9, seed=115, dtype=dtype)
    fused = fuse(impl, "ln", first, linear)
    x = (randn(6, 64, seed=116) + 60.0).to(dtype)
    expected, _, _ = module_chain_ref([first, linear], x)
    assert_close(fused(x), expected, dtype=dtype, hint=(
        f"{dtype} input with a large mean: compute mean and variance in float32 (compute_dtype), not in {dtype}"))


def test_bias_flag_must_be_a_bool(impl):
    # Flags are Python bools: a string, an int, None or a tensor is a TypeError naming the flag.
    fo = impl.fused_ops
    for bad in ("yes", 1, None, torch.tensor(True)):
        assert_rejects(lambda: fo.FusedLayerNormLinear(8, 4, bias=bad), "bias")
        assert_rejects(lambda: fo.FusedGELULinear(8, 4, bias=bad), "bias")


# --------------------------------------------------- memory of a block --

def test_mlp_block_saves_five_activations_per_token_less(impl):
    # LN -> Linear(d, 4d) -> GELU -> Linear(4d, d). Unfused, autograd keeps per
    # token: x (d), mean, rstd, LN output (d), pre-activation (4d), GELU output (4d).
    # Fused: x, mean, rstd (FusedLayerNormLinear) and the pre-activation (FusedGELULinear).
    d, tokens = 8, 2 * 5
    torch.manual_seed(150)
    ln, up, gelu, down = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)
    fused_up = impl.fused_ops.FusedLayerNormLinear.from_modules(ln, up)
    fused_down = impl.fused_ops.FusedGELULinear.from_modules(down)
    x = randn(2, 5, d, seed=151, requires_grad=True)
    unfused_bytes, y_ref = saved_bytes(lambda: down(gelu(up(ln(x)))))
    fused_bytes, y = saved_bytes(lambda: fused_down(fused_up(x)))
    assert_close(y, y_ref, hint="the fused block computes the same function")
    predicted = tokens * (d + 4 * d) * 4
    assert unfused_bytes - fused_bytes == predicted, (
        f"fused block saves {fused_bytes} bytes, unfused {unfused_bytes}: expected a difference of "
        f"N * (d + 4d) * 4 = {predicted} (the LayerNorm output and the GELU output)")


# ======================================================= Triton kernels ==

TRITON_SETTINGS = dict(deadline=None, derandomize=True, database=None,
                       suppress_health_check=[HealthCheck.function_scoped_fixture])  # triton_device is a constant


@pytest.mark.triton
@settings(max_examples=25, **TRITON_SETTINGS)
@given(rows=st.integers(1, 9), cols=st.integers(1, 2100), block_size=st.sampled_from([None, 16, 128, 512]),
       scale=st.sampled_from([0.1, 3.0, 50.0]), seed=st.integers(0, 2**16))
def test_triton_softmax_random_shapes(impl, triton_device, rows, cols, block_size, scale, seed):
    x = randn(rows, cols, seed=seed, device=triton_device, scale=scale)
    out = impl.fused_ops_triton.triton_softmax(x, block_size=block_size)
    assert_close(out, softmax_ref(x), probabilities=True,
                 hint=f"x {tuple(x.shape)}, block_size={block_size}, logits scale {scale}")
    sums = out.double().sum(dim=-1)
    assert_close(sums, torch.ones_like(sums), dtype=torch.float32, what="row sums",
                 hint="every row of a softmax sums to 1")


@pytest.mark.triton
@settings(max_examples=20, **TRITON_SETTINGS)
@given(rows=st.integers(1, 9), cols=st.integers(2, 2100), block_size=st.sampled_from([None, 16, 128, 512]),
       offset=st.sampled_from([0.0, 3.0, -8.0]), affine=st.sampled_from(["both", "weight", "bias", "none"]),
       seed=st.integers(0, 2**16))
def test_triton_layer_norm_random_shapes(impl, triton_device, rows, cols, block_size, offset, affine, seed):
    x = randn(rows, cols, seed=seed, device=triton_device, scale=2.0) + offset
    w = randn(cols, seed=seed + 1, device=triton_device) if affine in ("both", "weight") else None
    b = randn(cols, seed=seed + 2, device=triton_device) if affine in ("both", "bias") else None
    out = impl.fused_ops_triton.triton_layer_norm(x, w, b, block_size=block_size)
    assert_close(out, layer_norm_ref(x, w, b), hint=f"x {tuple(x.shape)}, block_size={block_size}, "
                                                    f"offset {offset}, affine={affine}")


@pytest.mark.triton
def test_triton_softmax_shift_invariance(impl, triton_device):
    # Multiples of 1/64 below 32 in magnitude: x + 512 is exact in float32, so the
    # shifted input is the same row moved by 512, and must give the same softmax.
    x = (randn(5, 333, seed=160, scale=4.0) * 64).round().clamp(-2000, 2000).div(64).to(triton_device)
    ft = impl.fused_ops_triton
    for block_size in (None, 64):
        assert_close(ft.triton_softmax(x + 512.0, block_size=block_size), softmax_ref(x), probabilities=True,
                     hint="softmax(x + c) = softmax(x): with the max subtracted a shift of 512 changes nothing")


@pytest.mark.triton
def test_triton_float16_extremes(impl, triton_device):
    x = randn(4, 200, seed=161, device=triton_device, scale=3000.0).clamp(-60000, 60000).to(torch.float16)
    x[0] = float("-inf")
    x[1, 100:] = float("-inf")
    out = impl.fused_ops_triton.triton_softmax(x)
    assert_no_nan(out, hint="float16 logits up to 6e4: compute in float32, guard the all -inf row")
    assert_close(out, softmax_ref(x), dtype=torch.float16, probabilities=True)


@pytest.mark.triton
def test_triton_empty_and_single_column(impl, triton_device):
    ft = impl.fused_ops_triton
    empty = torch.empty(0, 7, device=triton_device)
    assert ft.triton_softmax(empty).shape == (0, 7), "zero rows in, zero rows out"
    assert ft.triton_layer_norm(empty, None, None).shape == (0, 7), "zero rows in, zero rows out"
    one = randn(6, 1, seed=162, device=triton_device)
    assert_close(ft.triton_softmax(one), torch.ones(6, 1), probabilities=True,
                 hint="a row of one finite entry has softmax 1")
    assert_close(ft.triton_layer_norm(one, None, torch.full((1,), 0.5, device=triton_device)),
                 torch.full((6, 1), 0.5), hint="a row of one entry has x - mean = 0: the output is the bias")


@pytest.mark.triton
def test_triton_inputs_that_require_grad(impl, triton_device):
    ft = impl.fused_ops_triton
    x = randn(3, 40, seed=163, device=triton_device, requires_grad=True)
    assert_rejects(lambda: ft.triton_softmax(x), "x")
    w = randn(40, seed=164, device=triton_device, requires_grad=True)
    assert_rejects(lambda: ft.triton_layer_norm(x.detach(), w, None), "weight")
    with torch.no_grad():
        out = ft.triton_softmax(x)
        assert_close(out, softmax_ref(x), probabilities=True, hint="under no_grad the kernel simply runs")
        assert_close(ft.triton_layer_norm(x, w, None), layer_norm_ref(x, w, None))


@pytest.mark.triton
def test_triton_layer_norm_eps_zero_and_missing_affine(impl, triton_device):
    # weight=None means ones and bias=None zeros (as F.layer_norm); eps = 0 is allowed.
    ft = impl.fused_ops_triton
    x = randn(5, 37, seed=165, device=triton_device, scale=0.5)
    w = randn(37, seed=166, device=triton_device)
    b = randn(37, seed=167, device=triton_device)
    ones, zeros = torch.ones(37, device=triton_device), torch.zeros(37, device=triton_device)
    assert_close(ft.triton_layer_norm(x, None, None, eps=0.0), layer_norm_ref(x, None, None, 0.0),
                 hint="eps = 0 is allowed (as in F.layer_norm): rstd = 1 / sqrt(var); only eps < 0 is an error")
    assert_close(ft.triton_layer_norm(x, None, b), layer_norm_ref(x, ones, b),
                 hint="weight=None means a weight of ones (no scale)")
    assert_close(ft.triton_layer_norm(x, w, None), layer_norm_ref(x, w, zeros),
                 hint="bias=None means a bias of zeros (no shift)")


def _tiling_cases():
    # (shape, block_size): the shapes a launcher that packs several rows per program, walks its tiles
    # with a persistent grid, or loops along long rows must get right: the last tile only partly
    # filled (rows not a multiple of the rows per program), many more tiles than programs, a row
    # length that is not a power of two, one row, zero rows, and long rows with a tail in the last block.
    return {"many_short_rows_1000x24": ((1000, 24), None), "rows_not_a_multiple_77x300": ((77, 300), None),
            "4096x33": ((4096, 33), None), "one_row_1x3000": ((1, 3000), None),
            "zero_rows_0x3000": ((0, 3000), None), "3d_5x7x129": ((5, 7, 129), None),
            "looped_tail_3x20001": ((3, 20001), None), "looped_many_rows_45x1000_by_128": ((45, 1000), 128)}


@pytest.mark.triton
@pytest.mark.parametrize("case", list(_tiling_cases()))
def test_triton_softmax_tiles_and_long_rows(impl, triton_device, case):
    shape, block_size = _tiling_cases()[case]
    x = randn(*shape, seed=180, device=triton_device, scale=3.0)
    if x.shape[0] > 2:
        x[x.shape[0] // 2] = float("-inf")          # an empty row inside a tile: its guard must be per row
    out = impl.fused_ops_triton.triton_softmax(x, block_size=block_size)
    assert tuple(out.shape) == shape, f"{case}: output shape {tuple(out.shape)}, expected {shape}"
    assert_close(out, softmax_ref(x), probabilities=True,
                 hint=f"{case}: every row of every tile, the last partial tile included, must be masked by "
                      "rows < n_rows and cols < n_cols; a program that walks several tiles must reset m_i and l_i "
                      "per tile; the looped path must rescale l_i when the max grows")


@pytest.mark.triton
@pytest.mark.parametrize("case", list(_tiling_cases()))
def test_triton_layer_norm_tiles_and_long_rows(impl, triton_device, case):
    shape, block_size = _tiling_cases()[case]
    n = shape[-1]
    x = randn(*shape, seed=181, device=triton_device, scale=2.0) + 3.0
    w = randn(n, seed=182, device=triton_device)
    b = randn(n, seed=183, device=triton_device)
    out = impl.fused_ops_triton.triton_layer_norm(x, w, b, block_size=block_size)
    assert tuple(out.shape) == shape, f"{case}: output shape {tuple(out.shape)}, expected {shape}"
    assert_close(out, layer_norm_ref(x, w, b), hint=f"{case}: mean and var per row over the n real columns; the same w and b for every "
                 "row of a tile, and every tile of a program")


@pytest.mark.triton
def test_triton_more_bad_input(impl, triton_device):
    ft = impl.fused_ops_triton
    x = randn(4, 8, device=triton_device)
    assert_rejects(lambda: ft.triton_softmax(x.double()), "x")                 # float64 is not supported
    assert_rejects(lambda: ft.triton_softmax("x"), "x")
    assert_rejects(lambda: ft.triton_softmax(x, block_size=8), "block_size")
    assert_rejects(lambda: ft.triton_softmax(x, block_size=2.0), "block_size")
    assert_rejects(lambda: ft.triton_layer_norm(x, randn(8, device=triton_device).double(), None), "weight")
    assert_rejects(lambda: ft.triton_layer_norm(x, None, None, eps=float("nan")), "eps")
    assert_rejects(lambda: ft.triton_layer_norm(x, None, None, eps="1e-5"), "eps")


# ------------------------------------------- Triton on CUDA, real sizes --

@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_triton_cuda_vocabulary_softmax_and_strided(impl, dtype):
    # A Llama-3-sized vocabulary (128256 columns: the looped path) and a strided view.
    ft = impl.fused_ops_triton
    x = randn(16, 128256, seed=170, dtype=dtype, device="cuda", scale=5.0)
    assert_close(ft.triton_softmax(x), softmax_ref(x), dtype=dtype, probabilities=True)
    wide = randn(300, 5000, seed=171, dtype=dtype, device="cuda")
    view = wide[:, 7:4103]
    assert_close(ft.triton_softmax(view), softmax_ref(view), dtype=dtype, probabilities=True)
    w = randn(4096, seed=172, dtype=dtype, device="cuda")
    assert_close(ft.triton_layer_norm(view, w, None), layer_norm_ref(view, w, None), dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("kind,approximate", KINDS, ids=KIND_IDS)
def test_fused_modules_cuda_float32(impl, kind, approximate):
    first, linear = seeded_modules(kind, 64, 48, seed=173, dtype=torch.float32, device="cuda",
                                   approximate=approximate)
    fused = fuse(impl, kind, first, linear, approximate)
    x = randn(4, 33, 64, seed=174, device="cuda")
    check_against_reference(fused, [first, linear], x, randn(4, 33, 48, seed=175, device="cuda"), torch.float32)
