"""No check that num_kv_heads divides num_heads: GroupedQueryAttention(36, 6, 4) builds a module with n_rep = 1."""
MODULE = "gqa"


class GroupedQueryAttention(GroupedQueryAttention):
    def __init__(self, hidden_size, num_heads, num_kv_heads, bias=False):
        nn.Module.__init__(self)
        self.hidden_size, self.num_heads, self.num_kv_heads = hidden_size, num_heads, num_kv_heads
        self.head_dim = hidden_size // num_heads
        self.n_rep = max(num_heads // max(num_kv_heads, 1), 1)
        D = self.head_dim
        self.q_proj = nn.Linear(hidden_size, num_heads * D, bias=bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * D, bias=bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * D, bias=bias)
        self.o_proj = nn.Linear(num_heads * D, hidden_size, bias=bias)
