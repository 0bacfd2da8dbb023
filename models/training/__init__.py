"""Training code for the shipped polyp segmentation models (needs the `train` extra: torch)."""
