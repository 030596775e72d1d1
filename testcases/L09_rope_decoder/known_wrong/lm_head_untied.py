"""Ignores tie_word_embeddings: lm_head gets its own copy of the weights, which then train apart (and cost vocab x hidden more)."""
MODULE = "decoder"

_reference_init = Decoder.__init__


def _init(self, config):
    _reference_init(self, config)
    self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
    with torch.no_grad():
        self.lm_head.weight.copy_(self.embed_tokens.weight)


Decoder.__init__ = _init
