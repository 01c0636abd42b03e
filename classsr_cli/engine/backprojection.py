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

import numpy as np
import torch
import torch.nn.functional as F

from classsr_cli.imaging.bicubic import resize_taps

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


@functools.cache
def _taps(scale: int, upscale: bool) -> tuple[np.ndarray, int]:
    """`imresize`'s taps of one axis resized by `scale` (up) or 1/scale (down), as a convolution.

    Returns (phases, taps) float64 weights and the mirrored margin they read on each side. Down: one phase;
    output pixel i reads input pixels scale*i - margin .. on. Up: one row per output phase p (output pixel
    scale*i + p), reading input pixels i - 2 .. i + 2. Taken from `resize_taps` at an interior pixel, where
    no mirroring is involved, so the kernel and the pixel centres are `imresize`'s own.
    """
    inner = 8  # an interior output pixel (of the small side) of an axis of 16 of them
    if upscale:
        weights, indices = resize_taps(16, 16 * scale, scale)
        phases = np.zeros((scale, 5))
        for phase in range(scale):
            row = inner * scale + phase
            np.add.at(phases[phase], indices[row] - inner + 2, weights[row])
        return phases, 2
    weights, indices = resize_taps(16 * scale, 16, 1 / scale)
    margin = scale * inner - int(indices[inner].min())
    taps = np.zeros(int(indices[inner].max()) - int(indices[inner].min()) + 1)
    np.add.at(taps, indices[inner] - indices[inner].min(), weights[inner])
    return taps[None, :], margin


@functools.cache
def _conv_weights(scale: int, upscale: bool, channels: int, dtype, device) -> tuple[torch.Tensor, ...]:
    """Depthwise convolution weights of `_taps` for `channels` channels, on `device` in `dtype`.

    Kept, so made as ordinary tensors even when first asked for under inference mode: training reuses them.
    """
    with torch.inference_mode(False):
        return _make_conv_weights(
            torch.from_numpy(_taps(scale, upscale)[0]).to(device, dtype), upscale, channels
        )


def _make_conv_weights(taps: torch.Tensor, upscale: bool, channels: int) -> tuple[torch.Tensor, ...]:
    phases, size = taps.shape
    if not upscale:  # one pass per axis
        return (
            taps.view(1, 1, size, 1).repeat(channels, 1, 1, 1),
            taps.view(1, 1, 1, size).repeat(channels, 1, 1, 1),
        )
    # one 5x5 kernel per output phase (ry, rx): channel c*scale^2 + ry*scale + rx
    kernels = torch.einsum("ay,bx->abyx", taps, taps).reshape(phases * phases, 1, size, size)
    return (kernels.repeat(channels, 1, 1, 1),)


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
    margin = _taps(scale, upscale=False)[1]
    vertical, horizontal = _conv_weights(scale, False, image.shape[1], image.dtype, image.device)
    image = image.contiguous(memory_format=torch.channels_last)
    rows = F.conv2d(_mirror_pad(image, margin, 2), vertical, stride=(scale, 1), groups=image.shape[1])
    return F.conv2d(_mirror_pad(rows, margin, 3), horizontal, stride=(1, scale), groups=image.shape[1])


def _enlarge(image: torch.Tensor, scale: int) -> torch.Tensor:
    (kernels,) = _conv_weights(scale, True, image.shape[1], image.dtype, image.device)
    batch, channels, height, width = image.shape
    padded = _mirror_pad(_mirror_pad(image, 2, 2), 2, 3).contiguous(memory_format=torch.channels_last)
    phases = F.conv2d(padded, kernels, groups=channels)
    # channel c*scale^2 + ry*scale + rx holds output pixel (scale*i + ry, scale*j + rx): a pixel shuffle,
    # spelled out because from channels-last it runs 3 times faster than F.pixel_shuffle on a CPU
    pixels = phases.permute(0, 2, 3, 1).reshape(batch, height, width, channels, scale, scale)
    return pixels.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, height * scale, width * scale)
