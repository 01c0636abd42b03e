"""MSRResNet (SRResNet without batch norm, as in BasicSR and the official ClassSR); a branch changes nf."""

import torch.nn.functional as F
from torch import nn

from classsr_cli.models.spec import FamilySpec

SPEC = FamilySpec(
    name="srresnet",
    title="SRResNet",
    build=lambda width: SRResNet(nf=width),
    presets={3: (36, 52, 64)},
    checkpoint_key="conv_first.weight",
    paper_flops=(1658.22e6, 3438.01e6, 5193.99e6),
)


class ResidualBlockNoBN(nn.Module):
    def __init__(self, nf: int):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, padding=1)
        self.conv2 = nn.Conv2d(nf, nf, 3, padding=1)
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            conv.weight.data.mul_(0.1)  # small residuals keep the deep trunk stable at the start
            nn.init.zeros_(conv.bias)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


@SPEC.describes
class SRResNet(nn.Module):
    """x4 MSRResNet: 16 residual blocks, two pixel-shuffle stages, bilinear skip; input [0, 1]."""

    def __init__(self, nf: int = 64, blocks: int = 16, scale: int = 4, channels: int = 3):
        super().__init__()
        if scale != 4:
            raise ValueError("SRResNet is built for x4 only")
        self.width = nf
        self.scale = scale
        self.conv_first = nn.Conv2d(channels, nf, 3, padding=1)
        self.recon_trunk = nn.Sequential(*[ResidualBlockNoBN(nf) for _ in range(blocks)])
        self.upconv1 = nn.Conv2d(nf, nf * 4, 3, padding=1)
        self.upconv2 = nn.Conv2d(nf, nf * 4, 3, padding=1)
        self.pixel_shuffle = nn.PixelShuffle(2)
        self.HRconv = nn.Conv2d(nf, nf, 3, padding=1)
        self.conv_last = nn.Conv2d(nf, channels, 3, padding=1)
        self.lrelu = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x):
        fea = self.lrelu(self.conv_first(x))
        out = self.recon_trunk(fea)
        out = self.lrelu(self.pixel_shuffle(self.upconv1(out)))
        out = self.lrelu(self.pixel_shuffle(self.upconv2(out)))
        out = self.conv_last(self.lrelu(self.HRconv(out)))
        return out + F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
