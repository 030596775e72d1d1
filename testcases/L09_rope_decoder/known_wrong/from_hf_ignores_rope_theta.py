"""from_hf keeps the default rope_base 10000: a Llama 3 config (rope_theta 500000) turns its heads at the wrong speeds."""
MODULE = "decoder"

_reference_from_hf = Decoder.from_hf.__func__


@classmethod
def _from_hf(cls, hf_model):
    model = _reference_from_hf(cls, hf_model)
    model.config.rope_base = 10000.0
    return model


Decoder.from_hf = _from_hf
