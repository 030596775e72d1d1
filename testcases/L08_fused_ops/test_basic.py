"""L08 basic suite: fused LayerNorm+Linear and GELU+Linear (outputs, gradients,
gradcheck, from_modules, the bytes saved for backward, no_grad, bad input), and
the Triton softmax and layer norm (under the interpreter on CPU at small shapes,
on CUDA at realistic ones).

Run: ./course test L08    (or: pytest testcases/L08_fused_ops -m basic)
References are independent of the code under test: the unfused torch pair
(nn.LayerNorm -> nn.Linear, nn.GELU -> nn.Linear) run in float64 on copies of
the same weights (coursekit.reference.module_chain_ref), torch.softmax and
F.layer_norm in float64.
"""
import pytest
import torch
import torch.nn as nn

from coursekit.reference import layer_norm_ref, module_chain_ref, softmax_ref
from coursekit.testing import assert_close, assert_no_nan, assert_rejects, randn

IN, OUT = 20, 13                 # not powers of two
SHAPES = {"2d": (11, IN), "3d": (2, 7, IN)}
DTYPES = [torch.float64, torch.float32]

MEAN_TERM_HINT = (
    "LayerNorm's input gradient has three terms: grad_x = rstd * (g - mean(g) - x_hat * mean(g * x_hat)), "
    "g = grad_h * gamma. Forgetting mean(g) (x's effect through the mean) or the x_hat term (through the "
    "variance) gives a gradient that is wrong for every token")


# ----------------------------------------------------------------- helpers --

def seeded_pair(kind, seed, dtype=torch.float32, device="cpu", bias=True, eps=1e-5, approximate="none",
                in_features=IN, out_features=OUT):
    """The unfused torch modules with seeded weights: LayerNorm gamma and beta are
    random too (not 1 and 0), so mixing them up, or dropping them, shows."""
    gen = torch.Generator().manual_seed(seed)
    linear = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_features, in_features, generator=gen) / in_features ** 0.5)
        if bias:
            linear.bias.copy_(0.5 * torch.randn(out_features, generator=gen))
    if kind == "ln":
        first = nn.LayerNorm(in_features, eps=eps)
        with torch.no_grad():
            first.weight.copy_(1.0 + 0.5 * torch.randn(in_features, generator=gen))
            first.bias.copy_(0.5 * torch.randn(in_features, generator=gen))
    else:
        first = nn.GELU(approximate=approximate)
    return first.to(device=device, dtype=dtype), linear.to(device=device, dtype=dtype)


def make_fused(impl, kind, first, linear, approximate="none"):
    if kind == "ln":
        return impl.fused_ops.FusedLayerNormLinear.from_modules(first, linear)
    return impl.fused_ops.FusedGELULinear.from_modules(linear, approximate=approximate)


def matching_parameter(fused_param, reference_params):
    """from_modules copies: each fused parameter equals exactly one original one."""
    for name, p in reference_params:
        if p.shape == fused_param.shape and torch.equal(p.detach(), fused_param.detach()):
            return name, p
    raise AssertionError(
        f"the fused module has a parameter of shape {tuple(fused_param.shape)} that equals none of the original "
        f"modules' parameters ({', '.join(n for n, _ in reference_params)}): from_modules must copy each of them")


def check_against_reference(fused, modules, x, grad_out, dtype, hint):
    """Forward and backward of `fused` vs the unfused modules in float64; every gradient."""
    x = x.detach().clone().requires_grad_(True)
    y = fused(x)
    assert y.dtype == x.dtype, f"output dtype {y.dtype}, expected the input's {x.dtype}"
    y.backward(grad_out)
    y_ref, grad_x_ref, grads_ref = module_chain_ref(modules, x, grad_out)
    assert_close(y, y_ref, dtype=dtype, what="fused output", hint=hint)
    assert_close(x.grad, grad_x_ref, dtype=dtype, what="grad of the input", hint=hint)
    names = {id(p): f"{type(m).__name__}.{n}" for m in modules for n, p in m.named_parameters()}
    reference = [(names[id(p)], p) for p, _ in grads_ref]
    grad_of = {id(p): g for p, g in grads_ref}
    fused_params = list(fused.parameters())
    assert len(fused_params) == len(grads_ref), (
        f"the fused module has {len(fused_params)} parameters, the unfused pair {len(grads_ref)} "
        f"({', '.join(n for n, _ in reference)})")
    for p in fused_params:
        name, ref = matching_parameter(p, reference)
        assert p.grad is not None, f"the fused copy of {name} got no gradient: return it from backward"
        assert_close(p.grad, grad_of[id(ref)], dtype=dtype, what=f"grad of the fused copy of {name}", hint=hint)


def saved_bytes(fn):
    """Bytes of the distinct storages autograd saves for backward while fn()
    runs. Every saved tensor passes through the pack hook; views of one
    storage (weight.T, a reshaped activation) count once. Parameters are
    counted too: both versions save them, so they cancel in a difference."""
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), out


# -------------------------------------------------- LayerNorm -> Linear --

@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_layer_norm_linear_matches_unfused(impl, device, dtype, shape):
    ln, linear = seeded_pair("ln", seed=1, dtype=dtype, device=device)
    fused = make_fused(impl, "ln", ln, linear)
    x = randn(*SHAPES[shape], seed=2, dtype=dtype, device=device, scale=2.0) + 0.5
    grad_out = randn(*SHAPES[shape][:-1], OUT, seed=3, dtype=dtype, device=device)
    check_against_reference(fused, [ln, linear], x, grad_out, dtype, hint=(
        "forward: mean, biased variance over the last dim, rstd = 1/sqrt(var + eps), h = x_hat * gamma + beta, "
        "y = h W^T + b. backward: recompute x_hat and h from x, mean, rstd. " + MEAN_TERM_HINT))


def test_layer_norm_eps_goes_inside_the_square_root(impl):
    # With a large eps and small-variance rows, where eps sits matters a lot:
    # 1/sqrt(var + eps) (LayerNorm) vs 1/sqrt(var) + eps or 1/(sqrt(var) + eps).
    ln, linear = seeded_pair("ln", seed=4, dtype=torch.float64, eps=0.1)
    fused = make_fused(impl, "ln", ln, linear)
    x = randn(9, IN, seed=5, dtype=torch.float64, scale=0.2)
    check_against_reference(fused, [ln, linear], x, randn(9, OUT, seed=6, dtype=torch.float64), torch.float64,
                            hint="rstd = 1 / sqrt(var + eps): eps is added to the variance, inside the root, and "
                                 "from_modules takes eps from the LayerNorm")


def test_layer_norm_uses_the_biased_variance(impl):
    # Rows of 3 features: the biased variance (divide by n = 3) and the unbiased
    # one (n - 1 = 2) differ by a factor 1.5.
    gen = torch.Generator().manual_seed(7)
    ln, linear = nn.LayerNorm(3).double(), nn.Linear(3, 2).double()
    with torch.no_grad():
        linear.weight.copy_(torch.randn(2, 3, generator=gen))
        linear.bias.copy_(torch.randn(2, generator=gen))
    fused = impl.fused_ops.FusedLayerNormLinear.from_modules(ln, linear)
    x = torch.tensor([[1.0, 2.0, 4.0], [0.0, -3.0, 3.0]], dtype=torch.float64)
    check_against_reference(fused, [ln, linear], x, torch.ones(2, 2, dtype=torch.float64), torch.float64,
                            hint="LayerNorm divides by n, not n - 1: x.var(-1, unbiased=False), "
                                 "or ((x - mean) ** 2).mean(-1)")


# ------------------------------------------------------- GELU -> Linear --

@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_gelu_linear_matches_unfused(impl, device, dtype, shape, approximate):
    gelu, linear = seeded_pair("gelu", seed=10, dtype=dtype, device=device, approximate=approximate)
    fused = make_fused(impl, "gelu", gelu, linear, approximate=approximate)
    a = randn(*SHAPES[shape], seed=11, dtype=dtype, device=device, scale=2.0)
    grad_out = randn(*SHAPES[shape][:-1], OUT, seed=12, dtype=dtype, device=device)
    check_against_reference(fused, [gelu, linear], a, grad_out, dtype, hint=(
        f"approximate={approximate!r}: GELU(a) = a * Phi(a) = 0.5 a (1 + erf(a / sqrt 2)) exactly, or "
        "0.5 a (1 + tanh(sqrt(2/pi) (a + 0.044715 a^3))) with 'tanh'; the derivative is Phi(a) + a phi(a) "
        "(exact) or the tanh formula's own derivative. GELU comes BEFORE the linear layer"))


def test_tanh_and_exact_gelu_differ(impl):
    # The two GELUs differ by up to 4.7e-4 (near |a| = 2.7): far more than float64
    # rounding, so a module that ignores `approximate` cannot match both references.
    _, linear = seeded_pair("gelu", seed=8, dtype=torch.float64)
    a = torch.linspace(-4, 4, 7 * IN, dtype=torch.float64).reshape(7, IN)
    exact = impl.fused_ops.FusedGELULinear.from_modules(linear, approximate="none")(a)
    tanh = impl.fused_ops.FusedGELULinear.from_modules(linear, approximate="tanh")(a)
    gap = (exact - tanh).abs().max().item()
    assert gap > 1e-6, (
        f"approximate='none' and 'tanh' give outputs within {gap:.2g} of each other: the module ignores "
        "approximate (the erf GELU and the tanh approximation differ by up to ~5e-4 per activation)")
    assert_close(exact, linear(nn.functional.gelu(a)), what="approximate='none'",
                 hint="'none' is the exact GELU, with erf; the tanh formula is only an approximation of it")
    assert_close(tanh, linear(nn.functional.gelu(a, approximate="tanh")), what="approximate='tanh'")


# ---------------------------------------------------------- gradcheck --

def _gradcheck_module(module, x):
    """gradcheck over the input AND every parameter (swapped in with functional_call)."""
    names = [name for name, _ in module.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in module.named_parameters())

    def fn(x, *params):
        return torch.func.functional_call(module, dict(zip(names, params)), (x,))

    return torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("kind,approximate", [("ln", "none"), ("gelu", "none"), ("gelu", "tanh")],
                         ids=["layer_norm_linear", "gelu_linear", "gelu_tanh_linear"])
def test_gradcheck_float64(impl, kind, approximate):
    first, linear = seeded_pair(kind, seed=20, dtype=torch.float64, approximate=approximate,
                                in_features=7, out_features=5)
    fused = make_fused(impl, kind, first, linear, approximate=approximate)
    x = randn(2, 3, 7, seed=21, dtype=torch.float64, requires_grad=True)
    assert _gradcheck_module(fused, x), "gradcheck failed"


# ------------------------------------------------------- from_modules --

@pytest.mark.parametrize("kind", ["ln", "gelu"])
def test_from_modules_copies_the_parameters(impl, kind):
    first, linear = seeded_pair(kind, seed=30)
    fused = make_fused(impl, kind, first, linear)
    x = randn(5, IN, seed=31)
    with torch.no_grad():
        before = fused(x).clone()
        originals = list(first.parameters()) + list(linear.parameters())
        pointers = {p.data_ptr() for p in originals}
        shared = [tuple(p.shape) for p in fused.parameters() if p.data_ptr() in pointers]
        assert not shared, (
            f"fused parameters of shapes {shared} share memory with the original modules: from_modules must "
            "COPY (nn.Parameter(t.detach().clone()) or copy_ under no_grad), so that the two can be trained "
            "or changed independently")
        for p in originals:
            p.add_(1.0)  # change the originals after the fact
        assert_close(fused(x), before, what="fused output after the ORIGINAL modules were changed",
                     hint="from_modules copies the parameters; changing the originals later must not change it")
    assert all(p.requires_grad for p in fused.parameters()), "the fused module's parameters must require grad"


# ------------------------------------------------ saved for backward --

@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_layer_norm_linear_saves_one_activation_less(impl, dtype, shape):
    ln, linear = seeded_pair("ln", seed=40, dtype=dtype)
    fused = make_fused(impl, "ln", ln, linear)
    x = randn(*SHAPES[shape], seed=41, dtype=dtype, requires_grad=True)
    unfused_bytes, _ = saved_bytes(lambda: linear(ln(x)))
    fused_bytes, y = saved_bytes(lambda: fused(x))
    tokens = x.numel() // IN
    predicted = tokens * IN * x.element_size()  # the LayerNorm output h, N x in, that the Linear would save
    assert y.grad_fn is not None, "the fused output has no grad_fn: forward must go through the autograd.Function"
    assert unfused_bytes - fused_bytes == predicted, (
        f"the unfused LayerNorm -> Linear saves {unfused_bytes} bytes for backward, the fused one {fused_bytes}: "
        f"a difference of {unfused_bytes - fused_bytes}, but the lesson predicts exactly N * in * "
        f"{x.element_size()} = {tokens} * {IN} * {x.element_size()} = {predicted} (the LayerNorm output). Save "
        "x, mean, rstd (and the parameters) with ctx.save_for_backward, nothing else: not x_hat, not h; "
        "backward recomputes them")


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
def test_gelu_linear_saves_one_activation_less(impl, shape, approximate):
    gelu, linear = seeded_pair("gelu", seed=42, dtype=torch.float32, approximate=approximate)
    fused = make_fused(impl, "gelu", gelu, linear, approximate=approximate)
    a = randn(*SHAPES[shape], seed=43, requires_grad=True)
    unfused_bytes, _ = saved_bytes(lambda: linear(gelu(a)))
    fused_bytes, y = saved_bytes(lambda: fused(a))
    predicted = a.numel() * a.element_size()  # gelu(a), N x in
    assert y.grad_fn is not None, "the fused output has no grad_fn: forward must go through the autograd.Function"
    assert unfused_bytes - fused_bytes == predicted, (
        f"unfused GELU -> Linear saves {unfused_bytes} bytes, fused {fused_bytes}: difference "
        f"{unfused_bytes - fused_bytes}, predicted N * in * 4 = {predicted} (the GELU output). Save the "
        "pre-activation a and the weight only; backward recomputes gelu(a)")


@pytest.mark.parametrize("kind", ["ln", "gelu"])
def test_no_grad_saves_nothing_and_gives_the_same_output(impl, kind):
    first, linear = seeded_pair(kind, seed=44)
    fused = make_fused(impl, kind, first, linear)
    x = randn(3, 4, IN, seed=45, requires_grad=True)
    with torch.no_grad():
        saved, y = saved_bytes(lambda: fused(x))
        expected = linear(first(x))
    assert not y.requires_grad, "under torch.no_grad the output must not require grad"
    assert saved == 0, f"under torch.no_grad nothing should be saved for backward, got {saved} bytes"
    assert_close(y, expected, hint="the same numbers with and without grad mode")


# ----------------------------------------------------------- bad input --

def test_bad_input_is_rejected(impl):
    fo = impl.fused_ops
    ln_linear = fo.FusedLayerNormLinear(IN, OUT)
    gelu_linear = fo.FusedGELULinear(IN, OUT)
    assert_rejects(lambda: ln_linear(randn(4, IN + 1)), "x")                         # wrong last dim
    assert_rejects(lambda: ln_linear(torch.ones(4, IN, dtype=torch.long)), "x")      # not float
    assert_rejects(lambda: ln_linear(randn(4, IN, dtype=torch.float64)), "x")        # dtype != weights'
    assert_rejects(lambda: ln_linear([1.0] * IN), "x")                               # not a tensor
    assert_rejects(lambda: gelu_linear(randn(4, IN - 1)), "a", "x")
    assert_rejects(lambda: fo.FusedLayerNormLinear(0, OUT), "in_features")
    assert_rejects(lambda: fo.FusedLayerNormLinear(IN, 2.5), "out_features")
    assert_rejects(lambda: fo.FusedLayerNormLinear(IN, OUT, eps=-1e-5), "eps")    # eps = 0 is allowed; < 0 is not
    assert_rejects(lambda: fo.FusedLayerNormLinear(IN, OUT, eps=float("nan")), "eps")
    assert_rejects(lambda: fo.FusedGELULinear(IN, OUT, approximate="erf"), "approximate")
    assert_rejects(lambda: fo.FusedGELULinear(IN, 0), "out_features")
    assert_rejects(lambda: fo.FusedLayerNormLinear.from_modules(nn.LayerNorm(IN + 1), nn.Linear(IN, OUT)),
                   "layer_norm", "linear", "in_features", "normalized_shape")
    assert_rejects(lambda: fo.FusedLayerNormLinear.from_modules(nn.Linear(IN, OUT), nn.Linear(IN, OUT)), "layer_norm")
    assert_rejects(lambda: fo.FusedGELULinear.from_modules(nn.GELU()), "linear")
    assert_rejects(lambda: fo.FusedGELULinear.from_modules(nn.Linear(IN, OUT), approximate="fast"), "approximate")


# ======================================================= Triton kernels ==

SOFTMAX_HINT = (
    "per row: m = max, p = exp(x - m), out = p / sum(p), in float32; masked tail columns load as -inf "
    "(so exp gives 0), and a row that is all -inf gives zeros")
LAYER_NORM_HINT = (
    "per row, in float32: mean = sum(x) / n, var = sum((x - mean)^2) / n over the n REAL columns "
    "(mask the tail before squaring), rstd = 1 / sqrt(var + eps), y = (x - mean) * rstd * w + b")


def _softmax_cases():
    # (shape, block_size): single block with masked tails, several rows per
    # program, and the looped path (forced with a small block, and natural:
    # a row longer than the widest block, 32768).
    return {"65x781": ((65, 781), None), "3x5x1823": ((3, 5, 1823), None), "40x1": ((40, 1), None),
            "33x256": ((33, 256), None), "looped_781_by_128": ((6, 781), 128),
            "looped_32795": ((2, 32795), None)}


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("case", list(_softmax_cases()))
def test_triton_softmax_matches_torch(impl, triton_device, case, dtype):
    shape, block_size = _softmax_cases()[case]
    x = randn(*shape, seed=50, dtype=dtype, device=triton_device, scale=3.0)
    out = impl.fused_ops_triton.triton_softmax(x, block_size=block_size)
    assert out.dtype == dtype, f"output dtype {out.dtype}, expected the input dtype {dtype} (compute in float32, " \
                               "store in the input's dtype)"
    assert_close(out, softmax_ref(x), dtype=dtype, probabilities=True, hint=SOFTMAX_HINT)


@pytest.mark.triton
def test_triton_one_long_row(impl, triton_device):
    # One row of 3 x 8192 + 5 columns: longer than any single block, and too few rows to fill the GPU,
    # so however an implementation cuts it (blocks walked by one program, or chunks of programs of their
    # own), the parts' statistics must be merged. The first 9000 entries are -inf (a part with nothing
    # finite) and the rest have a spread of 12: a part's sum must be rescaled to the row's max.
    ft = impl.fused_ops_triton
    n = 3 * 8192 + 5
    x = randn(1, n, seed=60, device=triton_device, scale=4.0)
    x[0, :9000] = float("-inf")
    assert_close(ft.triton_softmax(x), softmax_ref(x), probabilities=True, what="softmax of one long row",
                 hint="merge the parts of a row: max m = max of the parts' maxima, sum l = sum of l_part * "
                      "exp(m_part - m); a part that is all -inf adds nothing")
    x = randn(1, n, seed=61, device=triton_device, scale=2.0) + 3.0
    w = randn(n, seed=62, device=triton_device)
    b = randn(n, seed=63, device=triton_device)
    assert_close(ft.triton_layer_norm(x, w, b), layer_norm_ref(x, w, b), what="layer norm of one long row",
                 hint="merge the parts' statistics with their counts: mean = sum n_p mean_p / n, "
                      "M2 = sum (M2_p + n_p (mean_p - mean)^2); the last part holds fewer columns")


@pytest.mark.triton
@pytest.mark.parametrize("block_size", [None, 64], ids=["single_block", "looped"])
def test_triton_softmax_large_logits_do_not_overflow(impl, triton_device, block_size):
    # Logits up to ~400: exp(400) overflows float32 (max ~3.4e38 = exp(88.7)).
    x = randn(12, 300, seed=51, device=triton_device, scale=100.0)
    out = impl.fused_ops_triton.triton_softmax(x, block_size=block_size)
    assert_no_nan(out, hint="exp(x) overflowed to inf and inf / inf = nan: subtract the row max first")
    assert_close(out, softmax_ref(x), probabilities=True, hint="subtract the running max before exp")


@pytest.mark.triton
@pytest.mark.parametrize("block_size", [None, 32], ids=["single_block", "looped"])
def test_triton_softmax_minus_inf_entries_and_rows(impl, triton_device, block_size):
    x = randn(6, 100, seed=52, device=triton_device)
    x[1] = float("-inf")                 # a fully masked row -> zeros (course convention)
    x[2, ::3] = float("-inf")            # some masked entries -> exactly 0
    x[3, :70] = float("-inf")            # the first two blocks (looped case) all -inf
    x[4, 50:] = float("-inf")
    out = impl.fused_ops_triton.triton_softmax(x, block_size=block_size)
    assert_no_nan(out, hint="a fully -inf row gives max = -inf and -inf - (-inf) = nan: replace an infinite "
                            "max by 0, and divide by 1 where the sum is 0")
    assert_close(out, softmax_ref(x), probabilities=True, hint=SOFTMAX_HINT)


@pytest.mark.triton
def test_triton_softmax_strided_input(impl, triton_device):
    base = randn(40, 900, seed=53, device=triton_device)
    for name, x in (("column slice (row stride 900)", base[:, 100:881]),
                    ("transposed", base[:, :30].T),
                    ("every other row", base[::2, :257])):
        out = impl.fused_ops_triton.triton_softmax(x)
        assert out.shape == x.shape, f"{name}: output shape {tuple(out.shape)}, expected {tuple(x.shape)}"
        assert_close(out, softmax_ref(x), probabilities=True, what=f"softmax of a {name} input",
                     hint="pass the row stride to the kernel (x.stride(0)), or make x contiguous first")


def _layer_norm_cases():
    return {"33x781": ((33, 781), None), "2x3x1823": ((2, 3, 1823), None), "16x100": ((16, 100), None),
            "looped_781_by_128": ((5, 781), 128), "looped_16400": ((2, 16400), None)}


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("case", list(_layer_norm_cases()))
def test_triton_layer_norm_matches_torch(impl, triton_device, case, dtype):
    shape, block_size = _layer_norm_cases()[case]
    n = shape[-1]
    x = randn(*shape, seed=60, dtype=dtype, device=triton_device, scale=2.0) + 1.5
    w = randn(n, seed=61, dtype=dtype, device=triton_device)
    b = randn(n, seed=62, dtype=dtype, device=triton_device)
    out = impl.fused_ops_triton.triton_layer_norm(x, w, b, eps=1e-5, block_size=block_size)
    assert out.dtype == dtype, f"output dtype {out.dtype}, expected {dtype}"
    assert_close(out, layer_norm_ref(x, w, b, 1e-5), dtype=dtype, hint=LAYER_NORM_HINT)


@pytest.mark.triton
def test_triton_layer_norm_large_mean(impl, triton_device):
    # Rows around 1000 with deviations of a few units, built so that every sum
    # is exact in float32 (multiples of 1/8, each row's deviations cancel): the
    # two-pass variance sum((x - mean)^2) / n is then exact, while the one-pass
    # E[x^2] - mean^2 subtracts two numbers near 1e6 and loses everything.
    n, gen = 781, torch.Generator().manual_seed(63)
    half = torch.randint(-16, 17, (8, n // 2), generator=gen) / 8.0
    dev = torch.cat([half, -half, torch.zeros(8, 1)], dim=1)
    dev = dev[:, torch.randperm(n, generator=gen)]
    x = (1000.0 + dev).to(triton_device)
    out = impl.fused_ops_triton.triton_layer_norm(x, None, None, eps=1e-5)
    # atol 1e-4, not the float32 1e-5: the GPU's float32 division (sum / n) is
    # not correctly rounded, so the mean may be off by an ulp of 1000 (6e-5),
    # i.e. x_hat by ~1e-5. The one-pass formula is off by ~1e-2.
    assert_close(out, layer_norm_ref(x, None, None, 1e-5), atol=1e-4, hint=(
        "compute the variance as mean((x - mean)^2), not mean(x^2) - mean^2: with a mean of 1000 the "
        "one-pass formula cancels catastrophically in float32"))


@pytest.mark.triton
def test_triton_layer_norm_biased_variance_and_eps(impl, triton_device):
    x = randn(4, 5, seed=64, device=triton_device, scale=0.1)
    out = impl.fused_ops_triton.triton_layer_norm(x, None, None, eps=0.05)
    assert_close(out, layer_norm_ref(x, None, None, 0.05),
                 hint="divide by n (biased variance), and add eps inside the square root: 1 / sqrt(var + eps)")


@pytest.mark.triton
def test_triton_bad_input_is_rejected(impl, triton_device):
    ft = impl.fused_ops_triton
    x = randn(4, 8, device=triton_device)
    assert_rejects(lambda: ft.triton_softmax(torch.ones(4, 8, dtype=torch.long, device=triton_device)), "x")
    assert_rejects(lambda: ft.triton_softmax(torch.tensor(1.0, device=triton_device)), "x")
    assert_rejects(lambda: ft.triton_softmax(x, block_size=100), "block_size")
    assert_rejects(lambda: ft.triton_layer_norm(x, randn(9, device=triton_device), None), "weight")
    assert_rejects(lambda: ft.triton_layer_norm(x, None, randn(4, device=triton_device)), "bias")
    assert_rejects(lambda: ft.triton_layer_norm(x, None, None, eps=-1e-5), "eps")  # eps = 0 is allowed; < 0 is not


# ------------------------------------------- Triton on CUDA, real sizes --

GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", [(1823, 781), (4096, 4096), (512, 16384), (64, 50257), (300, 40000)],
                         ids=["1823x781", "4096x4096", "512x16384", "few_long_rows_64x50257", "looped_300x40000"])
def test_triton_softmax_cuda(impl, shape, dtype):
    x = randn(*shape, seed=70, dtype=dtype, device="cuda", scale=4.0)
    out = impl.fused_ops_triton.triton_softmax(x)
    assert out.dtype == dtype
    assert_close(out, softmax_ref(x), dtype=dtype, probabilities=True, hint=SOFTMAX_HINT)


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", [(1823, 781), (4096, 4096), (8, 512, 1024), (64, 50257), (300, 40000)],
                         ids=["1823x781", "4096x4096", "8x512x1024", "few_long_rows_64x50257", "looped_300x40000"])
def test_triton_layer_norm_cuda(impl, shape, dtype):
    n = shape[-1]
    x = randn(*shape, seed=71, dtype=dtype, device="cuda", scale=2.0) + 1.0
    w = randn(n, seed=72, dtype=dtype, device="cuda")
    b = randn(n, seed=73, dtype=dtype, device="cuda")
    out = impl.fused_ops_triton.triton_layer_norm(x, w, b)
    assert out.dtype == dtype
    assert_close(out, layer_norm_ref(x, w, b, 1e-5), dtype=dtype, hint=LAYER_NORM_HINT)
