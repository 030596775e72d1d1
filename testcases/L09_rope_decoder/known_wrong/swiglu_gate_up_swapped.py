"""SwiGLU with gate and up swapped: down(silu(up(x)) * gate(x)); the names load, the model is another one."""
MODULE = "decoder"


def _forward(self, x):
    return self.down_proj(F.silu(self.up_proj(x)) * self.gate_proj(x))


SwiGLU.forward = _forward
