"""DnCNN (Zhang et al., "Beyond a Gaussian Denoiser", IEEE TIP 2017): the paper's denoising network (4.4).

ClassSR's Denoise-Modules are DnCNNs of 38, 52 and 64 channels (the -O network has 64).
"""

import torch
from torch import nn

from classsr_cli.models.spec import FamilySpec

SPEC = FamilySpec(
    name="dncnn",
    title="DnCNN",
    build=lambda width: DnCNN(width=width),
    presets={3: (38, 52, 64)},
    scale=1,  # the same size out
    task="denoise",
    # DnCNN (batch norm, 17 layers) sat at "output = input" for 300+ steps at 1e-3 with Adam and batch 16 and
    # then learned one colour channel at a time; at 1e-4 (DnCNN's usual rate with Adam) it learned at once
    branch_lr=1e-4,
    # LR pixels of real image the engine gives every piece (its default is 4): 17 layers reach 17 pixels, and
    # cells run alone with 8 came within 76 dB of the whole-image output, with 4 only 53 dB (up to 24 grey
    # levels off at cell edges), with 12 108 dB (`python -m benchmarks.context_margin PHOTO --families dncnn`)
    engine_context=8,
)


@SPEC.describes
class DnCNN(nn.Module):
    """17 convolutions (3x3): conv+ReLU, 15 x conv+BatchNorm+ReLU, conv; the network predicts the noise.

    Input and output are (N, 3, H, W) RGB in [0, 1], the same size (`scale` is 1): output = x - noise(x).
    `width` is the channel count of the hidden layers.
    """

    def __init__(self, width: int = 64, depth: int = 17, channels: int = 3):
        super().__init__()
        if depth < 3:
            raise ValueError(f"DnCNN needs at least 3 layers, got {depth}")
        self.width = width
        self.scale = 1
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        # the residual starts near zero: the untrained network returns its input, not noise of its own
        nn.init.normal_(layers[-1].weight, std=1e-3)

    def forward(self, x):
        return x - self.body(x)

    def narrowed(self, width: int) -> "DnCNN":
        """A copy of this network with `width` hidden channels: each hidden layer keeps its most important
        channels, scored by |BatchNorm scale| (the first layer: its filters' L1 norm) times the L1 norm of the
        next layer's weights on that channel, as in channel pruning (Li et al., "Pruning Filters for
        Efficient ConvNets", ICLR 2017; Liu et al., "Network Slimming", ICCV 2017). A starting point for
        training a narrow branch, not a finished network. Raises ValueError when `width` is not smaller."""
        if not 0 < width < self.width:
            raise ValueError(f"a narrowed DnCNN needs a width below {self.width}, got {width}")
        convs = [m for m in self.body if isinstance(m, nn.Conv2d)]
        norms = [m for m in self.body if isinstance(m, nn.BatchNorm2d)]
        narrow = DnCNN(width=width, depth=len(convs), channels=convs[0].in_channels)
        new_convs = [m for m in narrow.body if isinstance(m, nn.Conv2d)]
        new_norms = [m for m in narrow.body if isinstance(m, nn.BatchNorm2d)]
        with torch.no_grad():
            kept_in = torch.arange(convs[0].in_channels)
            for index, (conv, new_conv) in enumerate(zip(convs, new_convs, strict=True)):
                if index == len(convs) - 1:  # the output layer keeps its RGB channels
                    kept_out = torch.arange(conv.out_channels)
                else:
                    outgoing = convs[index + 1].weight.abs().sum(dim=(0, 2, 3))
                    own = norms[index - 1].weight.abs() if index else conv.weight.abs().sum(dim=(1, 2, 3))
                    kept_out = torch.argsort(own * outgoing, descending=True)[:width].sort().values
                new_conv.weight.copy_(conv.weight[kept_out][:, kept_in])
                if conv.bias is not None:
                    new_conv.bias.copy_(conv.bias[kept_out])
                if 0 < index < len(convs) - 1:
                    norm, new_norm = norms[index - 1], new_norms[index - 1]
                    for name in ("weight", "bias", "running_mean", "running_var"):
                        getattr(new_norm, name).copy_(getattr(norm, name)[kept_out])
                kept_in = kept_out
        return narrow
