"""L09 — Rotary position embeddings (RoPE) and RMSNorm.

Attention by itself is blind to order: permute the keys and values together and
every output stays the same. RoPE (Su et al., RoFormer, 2021) puts the position
into q and k by ROTATING them. Split a head of D dims into D/2 pairs; pair i is
a point in a plane, turned by the angle p * theta_i at position p:

    theta_i = base^(-2i/D),   i = 0 .. D/2 - 1        (base = 10000 in Llama 1/2)

    [x'_i      ]   [cos(p theta_i)  -sin(p theta_i)] [x_i      ]
    [x'_{i+D/2}] = [sin(p theta_i)   cos(p theta_i)] [x_{i+D/2}]

A rotation keeps lengths and composes by adding angles, R(a)^T R(b) = R(b - a),
so for a query rotated to position p and a key rotated to position j

    (R(p) q) . (R(j) k) = q^T R(p)^T R(j) k = q^T R(j - p) k

depends on the positions only through p - j: attention scores become relative
without a single learned position parameter.

Layout (tutorial/CONVENTIONS.md; Hugging Face / GPT-NeoX "rotate-half"): dims i
and i + D/2 form pair i. With cos, sin of shape (..., L, D) built as
cat(freqs, freqs), the rotation above is, for all pairs at once,

    apply_rope(x) = x * cos + rotate_half(x) * sin,
    rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2]).

Meta's original Llama code pairs ADJACENT dims (2i, 2i + 1) instead ("interleaved",
torch.view_as_complex); the two are the same model only after permuting the rows
of W_q and W_k. Mixing them up gives a model that runs and is wrong.

RMSNorm (Zhang & Sennrich, 2019) is LayerNorm without the mean and the bias:

    RMSNorm(x) = weight * x / sqrt(mean(x^2) + eps)

its statistic in float32 for half-precision inputs (as Hugging Face's LlamaRMSNorm).

Exercises: rope_cos_sin, rotate_half, apply_rope, RMSNorm.__init__/forward.
"""
import numbers

import torch
import torch.nn as nn

from ._checks import FLOAT_DTYPES, check_positive_int, check_tensor, compute_dtype


def rope_cos_sin(positions, head_dim, base=10000.0, dtype=torch.float32):
    """The cos and sin tables of RoPE for integer positions.

    positions: an integer tensor (..., L) of absolute token positions (any
      leading dims: (L,), (1, L) or one row per sequence (B, L)).
    Returns cos, sin: (..., L, head_dim) each, in `dtype`, with
        theta_i = base^(-2i / head_dim),  i = 0 .. head_dim/2 - 1
        freqs = positions[..., None] * theta          (..., L, head_dim/2): the angles p * theta_i
        cos = cos(cat(freqs, freqs)), sin = sin(cat(freqs, freqs))
    so column i and column i + head_dim/2 hold the same angle (rotate-half layout).
    The angles are computed in float32 (float64 when dtype is float64) and only
    the finished cos and sin are cast to dtype: a half-precision angle at
    position 3000 is off by whole radians.
    Errors: positions not an integer tensor (TypeError naming positions);
    head_dim not a positive EVEN int (ValueError/TypeError naming head_dim);
    base not a real number > 0 (naming base); dtype not a floating dtype (naming dtype).
    """
    raise NotImplementedError("L09: implement rope_cos_sin in model/rope.py (see tutorial/L09_rope_decoder/README.md)")


def rotate_half(x):
    """cat(-x[..., D/2:], x[..., :D/2]) for x (..., D) with D even.

    Pair i is (x_i, x_{i+D/2}); rotate_half sends it to (-x_{i+D/2}, x_i), the
    point turned by 90 degrees, so x * cos + rotate_half(x) * sin turns it by
    the angle. x: a float tensor with an even last dim (ValueError naming x).
    """
    raise NotImplementedError("L09: implement rotate_half in model/rope.py (see tutorial/L09_rope_decoder/README.md)")


def apply_rope(x, cos, sin):
    """Rotate x by the angles of cos and sin: x * cos + rotate_half(x) * sin.

    x: (B, H, L, D) queries or keys; cos, sin: (L, D), (B, L, D) or anything
    that broadcasts against x once a head axis is added: (B, L, D) becomes
    (B, 1, L, D), the same angles for every head. Returns x's shape and dtype
    (cos and sin are cast to x's dtype, as Hugging Face does).
    Errors: x not a float tensor of >= 2 dims with an even last dim (naming x);
    cos and sin of different shapes, or a last dim other than x's (naming cos/sin);
    shapes that do not broadcast (ValueError naming cos).
    """
    raise NotImplementedError("L09: implement apply_rope in model/rope.py (see tutorial/L09_rope_decoder/README.md)")


class RMSNorm(nn.Module):
    """RMSNorm(dim, eps=1e-6): y = weight * x / sqrt(mean(x^2 over the last dim) + eps).

    weight: nn.Parameter of shape (dim,), initialised to ones (no bias, no mean
    subtracted: that is LayerNorm). forward(x) for x (..., dim): the mean of
    squares and the division in float32 for half-precision x (float64 stays
    float64), cast back to x's dtype BEFORE the multiply by weight (Hugging
    Face's LlamaRMSNorm order). dim a positive int, eps a real >= 0 (ValueError
    naming it); x with last dim other than dim raises ValueError naming x.
    """

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        raise NotImplementedError("L09: implement RMSNorm.__init__ in model/rope.py (see tutorial/L09_rope_decoder/README.md)")

    def forward(self, x):
        raise NotImplementedError("L09: implement RMSNorm.forward in model/rope.py (see tutorial/L09_rope_decoder/README.md)")

    def extra_repr(self):
        return f"{self.dim}, eps={self.eps}"
