"""The feature map is elu(x) alone: negative features, so weights phi(q)·phi(k) can be negative and the normaliser can cross zero."""
MODULE = "linear_attention"


def elu_feature_map(x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    return F.elu(x)
