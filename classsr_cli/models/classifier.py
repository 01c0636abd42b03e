"""The Class-Module: a tiny CNN that scores how hard a 32x32 LR sub-image is to restore."""

import torch
from torch import nn


class ClassModule(nn.Module):
    """Conv 4x4 stride 4 to 128, three 1x1 128->128, 1x1 to 32 (LeakyReLU 0.1), global average, linear to M.

    Input is RGB in [0, 1] for every family; the output is one logit per class (simple -> hard).
    """

    def __init__(self, num_classes: int = 3, channels: int = 3):
        super().__init__()
        self.CondNet = nn.Sequential(
            nn.Conv2d(channels, 128, 4, stride=4),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(128, 128, 1),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(128, 128, 1),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(128, 128, 1),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(128, 32, 1),
        )
        self.lastOut = nn.Linear(32, num_classes)
        for module in self.CondNet:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, a=0.1, nonlinearity="leaky_relu")
                module.weight.data.mul_(0.1)
                nn.init.zeros_(module.bias)

    def center_input_filters_(self) -> None:
        """Make each first-layer kernel zero-mean over its 4x4 window, per colour channel, in place.

        The Class-Module then sees only each 4x4 block's deviations from its own mean: a change of
        brightness or a colour cast leaves its output as it was, and it ranks sub-images by their local
        detail, as the branches' extra error on them goes. Trained without it (the paper), our
        Class-Modules also learned the training photos' brightness, which did not carry over to other
        photos (docs/training.md). Training with `zero_mean_filters` calls this after every update
        (projected gradient descent); the saved weights are then a plain convolution like any other.
        """
        with torch.no_grad():
            weight = self.CondNet[0].weight
            weight -= weight.mean(dim=(2, 3), keepdim=True)

    def forward(self, x):
        return self.lastOut(self.CondNet(x).mean(dim=(2, 3)))
