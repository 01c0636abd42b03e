"""Back-projection: make an SR output agree with its LR input under the degradation it was trained for.

The networks map some colours and smooth areas slightly off (a flat patch of one colour may come back a
grey level or more brighter), which no later step notices. One step of iterative back-projection (Irani
and Peleg, 1991) removes that: shrink the output with the same MATLAB bicubic that made the training LR
images, enlarge the difference to the LR input with bicubic, and add it. Detail the network added that
is invisible after shrinking is kept; what the shrink can see is pulled back to the input. On the
validation photos this step raised every shipped network's PSNR (the README gives the figures).
"""

import functools
import math

import torch
import torch.nn.functional as F

BACK_PROJECTION_STEPS = 1  # a second step added 0.03 dB on the validation crops, at twice the cost


def back_project(
    sr: torch.Tensor, lr: torch.Tensor, scale: int, steps: int = BACK_PROJECTION_STEPS
) -> torch.Tensor:
    """`steps` back-projection steps, each sr <- sr + bicubic_up(lr - bicubic_down(sr)).

    sr: (N, C, scale*H, scale*W) and lr: (N, C, H, W), same device and dtype, values in [0, 1].
    Returns a tensor shaped like `sr` (not clamped). The resizes mirror the tensor at its edges, as MATLAB
    mirrors an image, so within a few pixels of them the result is the image's only at the image's own
    edges: callers pass pieces with context around the pixels they keep.
    """
    for _ in range(steps):
        sr = bicubic(lr - bicubic(sr, 1 / scale), scale) + sr  # in the enlargement's memory format
    return sr


def bicubic(image: torch.Tensor, factor: float) -> torch.Tensor:
    """MATLAB's bicubic resize of (N, C, H, W) by `factor` (antialiased when shrinking).

    Keys' cubic kernel (a = -0.5), stretched when shrinking, at MATLAB's pixel centres with its symmetric
    mirroring at the edges. Integer factors (up by s; down by 1/s where H and W divide by s) run as
    depthwise convolutions, about twice as fast on a CPU as PyTorch's antialiased interpolation, which
    the other factors use (it equals `imresize` away from the edges and renormalises its kernel at them).
    tests/test_regions.py checks both against `imresize`.
    """
    height, width = image.shape[-2:]
    up, down = round(factor), round(1 / factor)
    if factor > 1 and math.isclose(factor, up):
        return _enlarge(image, up)
    if factor < 1 and math.isclose(1 / factor, down) and height % down == 0 and width % down == 0:
        return _shrink(image, down)
    return F.interpolate(image, scale_factor=factor, mode="bicubic", align_corners=False, antialias=True)


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5, the one MATLAB's imresize uses."""
    x = x.abs()
    near = 1.5 * x**3 - 2.5 * x**2 + 1
    far = -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2
    return torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


@functools.cache
def _shrink_taps(scale: int) -> tuple[torch.Tensor, int]:
    """1-D weights of a shrink by `scale` and their reach on each side, in input pixels.

    Output pixel i lies at input position scale*i + (scale - 1)/2 and reads the input pixels within
    2*scale of it, weighted by the kernel stretched `scale` times; the reach is the same on both sides.
    """
    centre = (scale - 1) / 2
    offsets = [k for k in range(-3 * scale, 3 * scale) if abs(k - centre) < 2 * scale]
    weights = _cubic((torch.tensor(offsets, dtype=torch.float64) - centre) / scale)
    return weights / weights.sum(), -offsets[0]


@functools.cache
def _enlarge_taps(scale: int) -> torch.Tensor:
    """(scale^2, 5, 5) weights of an enlargement by `scale`: one 5x5 kernel per output phase (ry, rx).

    Output pixel scale*i + r lies at input position i + (r + 0.5)/scale - 0.5; its four taps per axis fall
    within the input pixels i - 2 .. i + 2.
    """
    positions = (torch.arange(scale, dtype=torch.float64) + 0.5) / scale - 0.5
    taps = _cubic(torch.arange(-2, 3, dtype=torch.float64)[None, :] - positions[:, None])
    taps = taps / taps.sum(dim=1, keepdim=True)  # (phase, offset -2..2)
    return torch.einsum("ay,bx->abyx", taps, taps).reshape(scale * scale, 5, 5)


def _mirror_pad(image: torch.Tensor, margin: int, dim: int) -> torch.Tensor:
    """Pad axis `dim` by `margin` mirrored as MATLAB does (the edge pixel repeated: 1 0 | 0 1 ..)."""
    length = image.shape[dim]
    if margin > length:  # a mirror wider than the image: fold the index (rare)
        index = torch.arange(-margin, length + margin, device=image.device).remainder(2 * length)
        return image.index_select(dim, torch.where(index < length, index, 2 * length - 1 - index))
    before = image.narrow(dim, 0, margin).flip(dim)
    after = image.narrow(dim, length - margin, margin).flip(dim)
    return torch.cat([before, image, after], dim=dim)


# Depthwise convolutions run fast on a CPU only in channels-last memory (about 20 times).
def _shrink(image: torch.Tensor, scale: int) -> torch.Tensor:
    weights, reach = _shrink_taps(scale)
    channels, size = image.shape[1], weights.numel()
    weights = weights.to(image.device, image.dtype)
    image = image.contiguous(memory_format=torch.channels_last)
    rows = F.conv2d(
        _mirror_pad(image, reach, 2),
        weights.view(1, 1, size, 1).expand(channels, 1, size, 1).contiguous(),
        stride=(scale, 1),
        groups=channels,
    )
    return F.conv2d(
        _mirror_pad(rows, reach, 3),
        weights.view(1, 1, 1, size).expand(channels, 1, 1, size).contiguous(),
        stride=(1, scale),
        groups=channels,
    )


def _enlarge(image: torch.Tensor, scale: int) -> torch.Tensor:
    weights = _enlarge_taps(scale).to(image.device, image.dtype)
    batch, channels, height, width = image.shape
    padded = _mirror_pad(_mirror_pad(image, 2, 2), 2, 3).contiguous(memory_format=torch.channels_last)
    phases = F.conv2d(padded, weights[:, None].repeat(channels, 1, 1, 1), groups=channels)
    # channel c*scale^2 + ry*scale + rx holds output pixel (scale*i + ry, scale*j + rx): a pixel shuffle,
    # spelled out because from channels-last it runs 3 times faster than F.pixel_shuffle on a CPU
    pixels = phases.permute(0, 2, 3, 1).reshape(batch, height, width, channels, scale, scale)
    return pixels.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, height * scale, width * scale)
