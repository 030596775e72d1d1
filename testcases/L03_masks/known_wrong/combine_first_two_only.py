"""combine_masks that ANDs only its first two masks and drops the rest (causal, padding, window -> window lost)."""
MODULE = "masks"

_reference_combine_masks = combine_masks


def combine_masks(*masks):
    present = [m for m in masks if m is not None]
    return _reference_combine_masks(*present[:2])
