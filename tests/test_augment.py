"""One code map of flips and rotations for numpy images (H, W, C) and tensors (C, H, W)."""

import numpy as np
import torch

from classsr_cli.data.augment import DIHEDRAL_TRANSFORMS, dihedral


def test_arrays_and_tensors_take_the_same_transform_for_each_code():
    image = np.random.default_rng(0).random((5, 7, 3))
    outputs = []
    for code in range(DIHEDRAL_TRANSFORMS):
        array = dihedral(image, code)
        tensor = dihedral(torch.from_numpy(image).permute(2, 0, 1), code)
        assert np.array_equal(array, tensor.permute(1, 2, 0).numpy())
        outputs.append(array.tobytes() + bytes(array.shape))
    assert len(set(outputs)) == DIHEDRAL_TRANSFORMS  # eight different transforms
    assert np.array_equal(dihedral(image, 0), image)
