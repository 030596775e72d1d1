"""GroupedQueryAttention takes bias by truthiness and never checks it: bias="no" or bias=1 silently builds biases, bias=None none."""
MODULE = "gqa"
CAUGHT_BY = "advanced"


def __init__(self, hidden_size, num_heads, num_kv_heads, bias=False):
    nn.Module.__init__(self)
    check_positive_int("hidden_size", hidden_size)
    check_positive_int("num_heads", num_heads)
    check_positive_int("num_kv_heads", num_kv_heads)
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} is not divisible by num_kv_heads={num_kv_heads}: "
                         "every key/value head must serve the same number of query heads")
    self.hidden_size, self.num_heads, self.num_kv_heads = hidden_size, num_heads, num_kv_heads
    self.head_dim = hidden_size // num_heads
    self.n_rep = num_heads // num_kv_heads
    D = self.head_dim
    self.q_proj = nn.Linear(hidden_size, num_heads * D, bias=bias)
    self.k_proj = nn.Linear(hidden_size, num_kv_heads * D, bias=bias)
    self.v_proj = nn.Linear(hidden_size, num_kv_heads * D, bias=bias)
    self.o_proj = nn.Linear(num_heads * D, hidden_size, bias=bias)


GroupedQueryAttention.__init__ = __init__
