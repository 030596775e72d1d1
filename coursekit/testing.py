"""Shared test helpers: seeded inputs, the tolerance table, and an
`assert_close` whose failure message says what went wrong and where.

Every lesson's tests compare an implementation against a float64 reference
(coursekit.reference) computed from the *same* inputs, so the tolerance only has
to cover the implementation's own rounding, not input quantisation.
"""
import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# ---------------------------------------------------------------------------
# Tolerances: the one table every test uses.  A value passes when
#     |actual - expected| <= atol + rtol * |expected|      (elementwise)
#
# float64: the implementation and the reference differ only in summation order:
#   a few ulps (2.2e-16 each) times the reduction length.
# float32: eps = 1.2e-7. A softmax-weighted sum over Lk <= 4096 keys of O(1)
#   values accumulates ~sqrt(Lk)*eps ~ 1e-5 in the worst rows; rtol 1.3e-6 is
#   torch's own float32 default.
# float16: eps = 9.8e-4. Computing in float32 and rounding once gives <= eps/2
#   relative error; kernels that round the probabilities P to float16 before
#   P @ V (as FlashAttention does) add about as much again, so atol = rtol = 2e-3
#   (two half-ulps at |x| ~ 1). Eager float16 attention without float32
#   accumulation misses this on large logits (those tests use overflow instead).
# bfloat16: eps = 7.8e-3, same reasoning: atol = rtol = 1.6e-2.
#
# prob_atol replaces atol for probabilities (softmax outputs, attention
# weights). They are mostly far below 1, where an atol sized for O(1) values
# would accept anything: 1/3000 computed as 1/2048 is off by only 1.5e-4.
# A correct result is off by a relative rounding error (rtol) plus, in float16,
# at most half the subnormal spacing (3e-8); the values below leave a margin.
# ---------------------------------------------------------------------------
TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-9, prob_atol=1e-14),
    torch.float32: dict(atol=1e-5, rtol=1.3e-6, prob_atol=1e-7),
    torch.float16: dict(atol=2e-3, rtol=2e-3, prob_atol=1e-5),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2, prob_atol=1e-5),
}


# A fused half-precision kernel is judged against what half precision can do
# (the rule of FlashAttention's own test suite): an eager implementation in the
# same dtype, whose matmuls and softmax round scores, probabilities and output
# to that dtype, is off the float64 reference by e_eager; the kernel must stay
# within EAGER_FACTOR * e_eager + eager_floor. The factor 2 leaves room for a
# different summation order (tiles, online rescaling) without admitting a
# real bug, which shows up as errors of O(|out|) ~ 1e-1, not 2x rounding. The
# floor is one unit in the last place at |x| ~ 0.3 (typical attention outputs),
# for points where e_eager happens to be tiny.
EAGER_FACTOR = 2.0
EAGER_FLOOR = {torch.float32: 3e-8, torch.float16: 2.5e-4, torch.bfloat16: 2e-3}


def tolerance(dtype):
    try:
        return TOLERANCES[dtype]
    except KeyError:
        raise ValueError(f"no tolerance defined for dtype {dtype}") from None


# ---------------------------------------------------------------------------
# Seeded inputs. Values are drawn in float32 on the CPU from a private
# generator, then cast and moved, so a seed gives the same numbers on every
# device and dtype (up to the cast).
# ---------------------------------------------------------------------------
def randn(*shape, seed=0, dtype=torch.float32, device="cpu", scale=1.0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen, dtype=torch.float32) * scale
    x = x.to(device=device, dtype=dtype)
    return x.requires_grad_(requires_grad)


def make_qkv(batch=2, heads=3, q_len=5, k_len=None, head_dim=8, v_dim=None, *,
             seed=0, dtype=torch.float32, device="cpu", requires_grad=False):
    """q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv) from one seed."""
    k_len = q_len if k_len is None else k_len
    v_dim = head_dim if v_dim is None else v_dim
    kw = dict(dtype=dtype, device=device, requires_grad=requires_grad)
    q = randn(batch, heads, q_len, head_dim, seed=seed, **kw)
    k = randn(batch, heads, k_len, head_dim, seed=seed + 1, **kw)
    v = randn(batch, heads, k_len, v_dim, seed=seed + 2, **kw)
    return q, k, v


def random_bool_mask(*shape, seed=0, p_keep=0.7, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=gen) < p_keep).to(device)


# The comparison functions checks rely on. Code under test must not replace
# them; the pytest plugin and the notebook guard (coursekit/nbguard.py) both
# watch this list.
COMPARISONS = {"torch": ("allclose", "isclose", "equal", "all", "any", "isnan", "isinf", "isfinite"),
               "torch.testing": ("assert_close",),
               "numpy": ("allclose", "isclose", "array_equal"),
               "numpy.testing": ("assert_allclose", "assert_array_equal")}


# ---------------------------------------------------------------------------
# Failure messages. Every helper below sets __tracebackhide__, so pytest shows
# the test line that failed, not the helper's source; messages are capped, so
# one wrong axis prints a screenful, not hundreds of lines. What matters comes
# first (what differs, where, by how much); the hint always survives the cut.
# ---------------------------------------------------------------------------
MAX_MESSAGE_LINES = 30
MAX_MESSAGE_CHARS = 2500
MAX_HINT_CHARS = 600


def cap_message(text, max_lines=MAX_MESSAGE_LINES, max_chars=MAX_MESSAGE_CHARS):
    """`text` cut to at most `max_lines` lines and `max_chars` characters, with a
    note saying how much was left out."""
    text = str(text)
    lines = text.splitlines()
    if len(lines) <= max_lines and len(text) <= max_chars:
        return text
    kept = "\n".join(lines[:max_lines])[:max_chars]
    return f"{kept}\n  ... [{len(text) - len(kept)} more characters cut: messages are capped at {max_lines} lines]"


def _message(text, hint):
    text = cap_message(text)
    return f"{text}\n  hint: {cap_message(hint, 5, MAX_HINT_CHARS)}" if hint else text


# ---------------------------------------------------------------------------
# assert_close
# ---------------------------------------------------------------------------
def assert_close(actual, expected, *, dtype=None, probabilities=False, atol=None, rtol=None,
                 hint="", what="output"):
    """Assert `actual` matches `expected` within the tolerance of `dtype`
    (default: actual's dtype; `probabilities` selects prob_atol). Equal
    infinities match; NaN never matches.

    On failure the message gives the worst element: its index, expected and
    actual values, abs and rel error, how many elements are off, and `hint`
    (what usually causes this failure).
    """
    __tracebackhide__ = True
    _exact_tensor(actual, what)
    expected = torch.as_tensor(expected)
    if tuple(actual.shape) != tuple(expected.shape):
        raise AssertionError(_message(
            f"{what} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}", hint))
    tol = tolerance(dtype or actual.dtype)
    atol = tol["prob_atol" if probabilities else "atol"] if atol is None else atol
    rtol = tol["rtol"] if rtol is None else rtol

    got = actual.detach().to("cpu", torch.float64)
    want = expected.detach().to("cpu", torch.float64)
    same_inf = torch.isinf(want) & (got == want)
    err = (got - want).abs()
    err = torch.where(same_inf, torch.zeros_like(err), err)
    err = torch.where(torch.isnan(err), torch.full_like(err, math.inf), err)
    allowed = atol + rtol * want.abs().nan_to_num(posinf=0.0, neginf=0.0)
    bad = err > allowed
    if not bad.any():
        return

    excess = torch.where(bad, err - allowed, torch.full_like(err, -math.inf))
    flat = int(excess.flatten().argmax())
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), want.shape)) if want.dim() else ()
    worst_want, worst_got = want.flatten()[flat].item(), got.flatten()[flat].item()
    rel = err.flatten()[flat].item() / max(abs(worst_want), 1e-300)
    finite_err = torch.where(torch.isfinite(err), err, torch.zeros_like(err))
    summary = (
        f"{what} differs from the reference: {int(bad.sum())} of {bad.numel()} elements "
        f"out of tolerance (atol={atol:g}, rtol={rtol:g}, dtype {actual.dtype}).\n"
        f"  worst at index {idx}: expected {worst_want:.6g}, got {worst_got:.6g} "
        f"(abs error {err.flatten()[flat].item():.3g}, rel error {rel:.3g})\n"
        f"  max finite abs error over all elements: {finite_err.max().item():.3g}"
    )
    if torch.isnan(got).any() and not torch.isnan(want).any():
        summary += f"\n  {int(torch.isnan(got).sum())} NaN values where the reference has none"
    raise AssertionError(_message(summary, hint))


def _exact_tensor(x, what):
    """Results must be plain tensors: a subclass (or any object with its own
    __torch_function__) could make every comparison come out equal. A
    module's nn.Parameter is torch's own and welcome."""
    __tracebackhide__ = True
    if type(x) is not torch.Tensor and type(x) is not torch.nn.Parameter:
        kind = "a torch.Tensor subclass" if isinstance(x, torch.Tensor) else "not a torch.Tensor"
        raise AssertionError(f"{what}: expected a plain torch.Tensor, got {type(x).__name__} ({kind})")


def assert_no_nan(x, *, what="output", hint=""):
    __tracebackhide__ = True
    _exact_tensor(x, what)
    nan = torch.isnan(x.detach())
    if nan.any():
        idx = tuple(int(i) for i in nan.nonzero()[0])
        raise AssertionError(_message(
            f"{what} has {int(nan.sum())} NaN values (first at index {idx})", hint))


def assert_rejects(fn, *names):
    """fn() must raise ValueError or TypeError (not a bare torch RuntimeError)
    whose message names the offending argument: one of `names`."""
    __tracebackhide__ = True
    try:
        fn()
    except (ValueError, TypeError) as err:
        message = str(err)
    except Exception as err:
        raise AssertionError(_message(
            f"expected a ValueError or TypeError naming {' or '.join(names)}, got "
            f"{type(err).__name__}: {cap_message(err, 5, MAX_HINT_CHARS)}",
            "check the arguments first, with the helpers in model/_checks.py")) from err
    else:
        raise AssertionError(f"expected a ValueError or TypeError naming {' or '.join(names)}; nothing was raised")
    if not any(name in message for name in names):
        raise AssertionError(f"the error message should name the argument ({' or '.join(names)}); "
                             f"got: {cap_message(repr(message), 5, MAX_HINT_CHARS)}")


def assert_same_mask(got, expected, *, what="mask", hint=""):
    """Exact comparison of boolean masks, naming the first differing position."""
    __tracebackhide__ = True
    _exact_tensor(got, what)
    assert got.dtype == torch.bool, f"{what} has dtype {got.dtype}, expected torch.bool (True = may attend)"
    assert tuple(got.shape) == tuple(expected.shape), (
        f"{what} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}" + (f"\n  hint: {hint}" if hint else ""))
    expected = expected.to(got.device)
    wrong = got != expected
    if wrong.any():
        first = tuple(int(i) for i in wrong.nonzero()[0])
        shown = f"\n  expected:\n{expected.int().cpu()}\n  got:\n{got.int().cpu()}" if got.numel() <= 64 else ""
        raise AssertionError(_message(
            f"{what} differs from the reference at {int(wrong.sum())} of {wrong.numel()} positions; "
            f"first at index {first}: expected {bool(expected[first])}, got {bool(got[first])}" + shown, hint))


def assert_within_eager_error(actual, expected, eager, *, what="output", hint=""):
    """Max |actual - expected| <= EAGER_FACTOR * max |eager - expected| + floor.

    expected: float64 reference; eager: the same computation done by plain
    PyTorch ops in actual's dtype (see EAGER_FACTOR)."""
    __tracebackhide__ = True
    _exact_tensor(actual, what)
    if tuple(actual.shape) != tuple(expected.shape):
        raise AssertionError(_message(
            f"{what} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}", hint))
    want = expected.detach().to("cpu", torch.float64)
    err = (actual.detach().to("cpu", torch.float64) - want).abs().nan_to_num(nan=math.inf)
    eager_err = (eager.detach().to("cpu", torch.float64) - want).abs().max().item()
    bound = EAGER_FACTOR * eager_err + EAGER_FLOOR[actual.dtype]
    worst = err.max().item()
    if worst <= bound:
        return
    flat = int(err.flatten().argmax())
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), want.shape))
    raise AssertionError(_message(
        f"{what} ({actual.dtype}) is further from the float64 reference than {actual.dtype} arithmetic "
        f"explains: max abs error {worst:.3g} at index {idx} (expected {want.flatten()[flat].item():.6g}, "
        f"got {actual.detach().flatten()[flat].item():.6g}); eager {actual.dtype} PyTorch is off by "
        f"{eager_err:.3g}, so the bound is {EAGER_FACTOR:g} x {eager_err:.3g} + {EAGER_FLOOR[actual.dtype]:g} "
        f"= {bound:.3g}", hint))


# ---------------------------------------------------------------------------
# Memory: what a tiled kernel must never build. A TorchDispatchMode sees every
# op that runs, forward and backward, below autograd; it records the size of
# the storage behind each result, so a view or an expand of a big buffer counts
# as that buffer and a cheap expand of a small one does not.
# ---------------------------------------------------------------------------
class LargestTensorRecorder(TorchDispatchMode):
    """`with LargestTensorRecorder() as rec: ...` then rec.elements, rec.op:
    the most elements any op's result had behind it, and which op made it."""

    def __init__(self):
        super().__init__()
        self.elements, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.element_size() > 0:
                elements = t.untyped_storage().nbytes() // t.element_size()
                if elements > self.elements:
                    self.elements, self.op = elements, str(func)
        return out


def assert_never_materialises(fn, limit, *, what, hint=""):
    """Run fn() and fail if any tensor it creates has `limit` elements or more.

    Returns fn()'s result. `what` names the forbidden tensor ("an Lq x Lk
    score matrix") for the message."""
    __tracebackhide__ = True
    with LargestTensorRecorder() as rec:
        result = fn()
    assert rec.elements < limit, _message(
        f"a tensor of {rec.elements} elements was created (by {rec.op}); {what} has {limit}: "
        f"the computation must work block by block and never hold it", hint)
    return result


# ---------------------------------------------------------------------------
# Decoding with a cache (L04, L06, L07): feed a sequence chunk by chunk.
# ---------------------------------------------------------------------------
def decode_in_chunks(module, x, chunks, cache, key_padding_mask=None, **kwargs):
    """Feed x (B, L, hidden) through `module` chunk by chunk (sizes `chunks`)
    with one cache, and concatenate the outputs along L. The mask passed at each
    call covers every key so far, key_padding_mask[:, :end]; kwargs (causal=...)
    go to every call."""
    outs, start = [], 0
    for n in chunks:
        end = start + n
        mask = None if key_padding_mask is None else key_padding_mask[:, :end]
        outs.append(module(x[:, start:end], key_padding_mask=mask, cache=cache, **kwargs))
        start = end
    return torch.cat(outs, dim=1)


def left_padding(lengths, total, device="cpu"):
    """(B, total) bool, True = real token, each row's lengths[b] real tokens at the right end."""
    keep = torch.ones(len(lengths), total, dtype=torch.bool, device=device)
    for b, n in enumerate(lengths):
        keep[b, :total - n] = False
    return keep
