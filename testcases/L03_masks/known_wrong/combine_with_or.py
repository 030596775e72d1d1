"""combine_masks with OR instead of AND: a key is visible if ANY mask allows it (padding leaks through causal)."""
MODULE = "masks"


def combine_masks(*masks):
    present = [m for m in masks if m is not None]
    if not present:
        return None
    combined = present[0]
    for mask in present[1:]:
        combined = combined | mask
    return combined
