"""Training data: procedural CT phantoms, the augmented MNI152 MRI template, and 2D slice datasets."""
