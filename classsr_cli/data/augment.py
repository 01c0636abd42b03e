"""The flips and rotations of training data: the 8 symmetries of the square (the dihedral group D4).

One code map serves every data path (the prepared sub-images, the sampler's resumable stream, the crops
drawn on a GPU), so a code means the same transform everywhere: bit 2 mirrors left-right first, then bits
0-1 rotate by 90 degrees that many times (counter-clockwise, as `rot90`).
"""

import numpy as np
import torch

DIHEDRAL_TRANSFORMS = 8  # 4 rotations x (mirrored or not)


def dihedral(image, code: int):
    """One of the 8 flips/rotations of an image, by `code` (0..7; 0 is the identity).

    A numpy array is (H, W) or (H, W, C), as images are held at the imaging boundary; its result is a view.
    A torch tensor is (..., H, W), channels first, as networks take it; its result is contiguous.
    """
    if isinstance(image, torch.Tensor):
        if code & 4:
            image = image.flip(-1)
        if code & 3:
            image = torch.rot90(image, code & 3, dims=(-2, -1))
        return image.contiguous()
    if code & 4:
        image = image[:, ::-1]
    if code & 3:
        image = np.rot90(image, code & 3, axes=(0, 1))
    return image
