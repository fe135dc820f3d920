"""Training data: procedural CT phantoms (chest and abdomen, head, pelvis, test objects) and their domain
randomisation, the augmented MNI152 MRI template, and 2D slice datasets."""
