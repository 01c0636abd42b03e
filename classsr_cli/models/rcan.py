"""RCAN (Zhang et al., ECCV 2018) as in the official ClassSR code; a branch changes n_feats."""

from torch import nn

from classsr_cli.models.common import MeanShift
from classsr_cli.models.spec import FamilySpec

SPEC = FamilySpec(
    name="rcan",
    title="RCAN",
    build=lambda width: RCAN(n_feats=width),
    presets={3: (36, 50, 64)},
    min_width=16,  # its channel attention divides the width by 16
    checkpoint_key="head.0.weight",
    paper_flops=(10329.88e6, 19907.91e6, 32600.09e6),
)

# The official RCAN works on 0-255 pixel values; callers pass [0, 1] and the scaling stays in here.
PIXEL_RANGE = 255.0


class ChannelAttention(nn.Module):
    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.conv_du(x.mean(dim=(2, 3), keepdim=True))


class RCAB(nn.Module):
    """Residual channel attention block: conv, ReLU, conv, channel attention, plus the input."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            ChannelAttention(channels, reduction),
        )

    def forward(self, x):
        return x + self.body(x)


class ResidualGroup(nn.Module):
    def __init__(self, channels: int, reduction: int, blocks: int):
        super().__init__()
        layers = [RCAB(channels, reduction) for _ in range(blocks)]
        layers.append(nn.Conv2d(channels, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.body(x)


@SPEC.describes
class RCAN(nn.Module):
    """x4 RCAN: 10 residual groups of 20 RCABs, channel attention with reduction 16; input [0, 1]."""

    def __init__(
        self,
        n_feats: int = 64,
        groups: int = 10,
        blocks: int = 20,
        reduction: int = 16,
        scale: int = 4,
        channels: int = 3,
    ):
        super().__init__()
        if scale != 4:
            raise ValueError("RCAN is built for x4 only")
        if n_feats < reduction:
            raise ValueError(f"RCAN width {n_feats} must be at least its attention reduction {reduction}")
        self.width = n_feats
        self.scale = scale
        self.sub_mean = MeanShift(PIXEL_RANGE, -1)
        self.add_mean = MeanShift(PIXEL_RANGE, +1)
        self.head = nn.Sequential(nn.Conv2d(channels, n_feats, 3, padding=1))
        body = [ResidualGroup(n_feats, reduction, blocks) for _ in range(groups)]
        body.append(nn.Conv2d(n_feats, n_feats, 3, padding=1))
        self.body = nn.Sequential(*body)
        upsampler = nn.Sequential(
            nn.Conv2d(n_feats, 4 * n_feats, 3, padding=1),
            nn.PixelShuffle(2),
            nn.Conv2d(n_feats, 4 * n_feats, 3, padding=1),
            nn.PixelShuffle(2),
        )
        self.tail = nn.Sequential(upsampler, nn.Conv2d(n_feats, channels, 3, padding=1))

    def forward(self, x):
        x = self.head(self.sub_mean(x * PIXEL_RANGE))
        x = x + self.body(x)
        return self.add_mean(self.tail(x)) / PIXEL_RANGE
