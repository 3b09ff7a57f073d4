"""Tasks of the medmem MONAI Label app."""
