"""The recurrent form always starts from zeros: decoding after a prefill forgets the prefix."""
MODULE = "linear_attention"

_reference_recurrent = linear_attention_recurrent


def linear_attention_recurrent(q, k, v, state=None, feature_map=None, eps=1e-6):
    if state is not None:
        _check_state(state, (q.shape[0], q.shape[1], state[0].shape[-2] if hasattr(state[0], "shape") else 0,
                             v.shape[-1]), torch.float64, q.device)
    return _reference_recurrent(q, k, v, None, feature_map, eps)
