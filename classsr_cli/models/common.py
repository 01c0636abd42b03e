"""Building blocks shared by several families."""

import torch
from torch import nn

# DIV2K's RGB mean, used by the official CARN and RCAN to centre their inputs.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


class MeanShift(nn.Conv2d):
    """Fixed 1x1 convolution that subtracts (sign=-1) or adds (sign=+1) the dataset mean.

    Kept as a convolution so that its weight and bias sit in the state dict exactly where the
    official checkpoints have them (`sub_mean.*`, `add_mean.*`).
    """

    def __init__(self, value_range: float, sign: int, mean=DIV2K_RGB_MEAN):
        super().__init__(3, 3, kernel_size=1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.bias.copy_(sign * value_range * torch.tensor(mean))
        for p in self.parameters():
            p.requires_grad = False
