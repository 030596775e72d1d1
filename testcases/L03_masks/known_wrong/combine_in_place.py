"""combine_masks ANDs into its first argument in place (&=): the caller's mask, a cached one included, is changed for every later user."""
MODULE = "masks"


def combine_masks(*masks):
    present = [m for m in masks if m is not None]
    for i, mask in enumerate(present):
        _check_bool_mask(f"masks[{i}]", mask)
    if not present:
        return None
    shape = torch.broadcast_shapes(*(m.shape for m in present))
    combined = present[0]
    if combined.shape != shape:  # an in-place AND cannot grow its target: only then make a new tensor
        combined = combined.expand(shape).clone()
    for mask in present[1:]:
        combined &= mask
    return combined
