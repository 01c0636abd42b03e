"""FSRCNN (Dong et al., ECCV 2016) as in the official ClassSR code: a ClassSR branch changes d only."""

from torch import nn

from classsr_cli.models.spec import FamilySpec

SPEC = FamilySpec(
    name="fsrcnn",
    title="FSRCNN",
    build=lambda width: FSRCNN(d=width),
    presets={2: (16, 56), 3: (16, 36, 56), 4: (16, 29, 43, 56), 5: (16, 26, 36, 46, 56)},
    # LR pixels of real context around each region piece (the engine's default is 4): its receptive field
    # reaches about 7 LR pixels, and with 4 the zero padding beyond showed on smooth input, random smooth
    # gradients through ClassSR-FSRCNN up to 2.4 grey levels off bicubic, 1.8 with 6 (tests/test_regions.py)
    engine_context=6,
    # Bands (and the tallest pieces) four cell rows tall on a CPU: its features are small, so less context
    # per output pixel pays more than cache-sized pieces (an earlier engine, with one-row pieces: FSRCNN-O
    # 1.64 times the plain network's time, four rows 1.09 to 1.16). Eight rows were a little faster then
    # (0.90 against 0.93 of the plain network), but pieces of up to eight by eight cells, in every size,
    # took a 9600x9600 output's memory from 552 to 689 MiB (benchmarks/engine_memory.py's engine alone)
    cpu_piece_rows=4,
    # Chunks of 32 cells on a CPU (the default is 8): the Class-Module runs once per chunk, and the output
    # canvases and their seams are per chunk, which weighs against so small a network. On 6 validation crops
    # (480x270 LR), one quiet run: ClassSR-FSRCNN 0.99x the plain network's time with 32, 1.14x with 8
    cpu_chunk_cols=32,
    checkpoint_key="head_conv.0.weight",
    paper_flops=(141.26e6, 304.57e6, 467.88e6),
)


@SPEC.describes
class FSRCNN(nn.Module):
    """x4 FSRCNN with d feature channels, s shrinking channels and m mapping layers; input [0, 1]."""

    def __init__(self, d: int = 56, s: int = 12, m: int = 4, scale: int = 4, channels: int = 3):
        super().__init__()
        self.width = d
        self.scale = scale
        self.head_conv = nn.Sequential(nn.Conv2d(channels, d, 5, padding=2), nn.PReLU())
        layers = [nn.Sequential(nn.Conv2d(d, s, 1), nn.PReLU())]
        layers += [nn.Conv2d(s, s, 3, padding=1) for _ in range(m)]
        # one PReLU after the whole mapping stack, not between its layers: the official layout
        layers += [nn.PReLU(), nn.Sequential(nn.Conv2d(s, d, 1), nn.PReLU())]
        self.body_conv = nn.Sequential(*layers)
        # kernel 9, padding 3, output padding 1: exactly scale x the input size for scale 4
        self.tail_conv = nn.ConvTranspose2d(d, channels, 9, stride=scale, padding=3, output_padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, a=0.25, nonlinearity="leaky_relu")
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.tail_conv.weight, std=0.001)
        nn.init.zeros_(self.tail_conv.bias)

    def forward(self, x):
        return self.tail_conv(self.body_conv(self.head_conv(x)))
