"""Samples from the whole vocabulary: top_k is accepted and never applied."""
MODULE = "decoder"

_reference_generate = generate


def generate(model, input_ids, max_new_tokens, attention_mask=None, use_cache=True,
             temperature=0.0, top_k=None, generator=None):
    return _reference_generate(model, input_ids, max_new_tokens, attention_mask, use_cache, temperature, None,
                               generator)
