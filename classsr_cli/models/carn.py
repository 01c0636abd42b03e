"""CARN-M (Ahn et al., ECCV 2018) as in the official ClassSR code; a branch changes the width nf."""

import torch
from torch import nn

from classsr_cli.models.common import MeanShift
from classsr_cli.models.spec import FamilySpec

SPEC = FamilySpec(
    name="carn",
    title="CARN-M",
    build=lambda width: CARN(nf=width),
    presets={3: (36, 52, 64)},
    width_multiple=4,  # its grouped convolutions take 4 groups
    checkpoint_key="entry.weight",
    paper_flops=(380.53e6, 771.88e6, 1155.19e6),
)


class EfficientResidualBlock(nn.Module):
    """Two grouped 3x3 convolutions and a 1x1 pointwise one, with a residual connection."""

    def __init__(self, nf: int, group: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(nf, nf, 3, padding=1, groups=group),
            nn.ReLU(inplace=True),
            nn.Conv2d(nf, nf, 3, padding=1, groups=group),
            nn.ReLU(inplace=True),
            nn.Conv2d(nf, nf, 1),
        )

    def forward(self, x):
        return torch.relu(self.body(x) + x)


def fusion_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 convolution without bias, batch norm, ReLU: how the official CARN-M fuses cascaded features."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class CascadingBlock(nn.Module):
    """One residual block applied three times (weights shared, as in CARN-M), each result fused 1x1."""

    def __init__(self, nf: int, group: int):
        super().__init__()
        self.b1 = EfficientResidualBlock(nf, group)
        self.c1 = fusion_block(nf * 2, nf)
        self.c2 = fusion_block(nf * 3, nf)
        self.c3 = fusion_block(nf * 4, nf)

    def forward(self, x):
        cascade = x
        out = x
        for fuse in (self.c1, self.c2, self.c3):
            cascade = torch.cat([cascade, self.b1(out)], dim=1)
            out = fuse(cascade)
        return out


class Upsampler(nn.Module):
    """Two (grouped conv to 4x channels, ReLU, pixel shuffle x2) stages for x4."""

    def __init__(self, nf: int, group: int, scale: int = 4):
        super().__init__()
        if scale != 4:
            raise ValueError("CARN is built for x4 only")
        stages = []
        for _ in range(2):
            stages += [
                nn.Conv2d(nf, 4 * nf, 3, padding=1, groups=group),
                nn.ReLU(inplace=True),
                nn.PixelShuffle(2),
            ]
        self.body = nn.Sequential(*stages)

    def forward(self, x):
        return self.body(x)


class _UpsampleWrapper(nn.Module):
    # the official checkpoint nests the upsampler once more: `upsample.up.body.*`
    def __init__(self, nf: int, group: int, scale: int):
        super().__init__()
        self.up = Upsampler(nf, group, scale)

    def forward(self, x):
        return self.up(x)


@SPEC.describes
class CARN(nn.Module):
    """x4 CARN-M: mean shift, entry conv, three cascading blocks with 1x1 fusion, grouped upsampler."""

    def __init__(self, nf: int = 64, group: int = 4, scale: int = 4, channels: int = 3):
        super().__init__()
        if nf % group:
            raise ValueError(f"CARN width {nf} must be a multiple of its group count {group}")
        self.width = nf
        self.scale = scale
        self.sub_mean = MeanShift(1.0, -1)
        self.add_mean = MeanShift(1.0, +1)
        self.entry = nn.Conv2d(channels, nf, 3, padding=1)
        self.b1 = CascadingBlock(nf, group)
        self.b2 = CascadingBlock(nf, group)
        self.b3 = CascadingBlock(nf, group)
        self.c1 = fusion_block(nf * 2, nf)
        self.c2 = fusion_block(nf * 3, nf)
        self.c3 = fusion_block(nf * 4, nf)
        self.upsample = _UpsampleWrapper(nf, group, scale)
        self.exit = nn.Conv2d(nf, channels, 3, padding=1)

    def forward(self, x):
        x = self.entry(self.sub_mean(x))
        cascade = x
        out = x
        for block, fuse in ((self.b1, self.c1), (self.b2, self.c2), (self.b3, self.c3)):
            cascade = torch.cat([cascade, block(out)], dim=1)
            out = fuse(cascade)
        return self.add_mean(self.exit(self.upsample(out)))
