"""Rewrite a network, for inference only, into an equivalent one that runs faster.

- Batch norm after a convolution is folded into that convolution's weights and bias (CARN's fusion blocks):
  one pass over the features instead of two.
- A transposed convolution whose output is exactly `stride` x its input (FSRCNN's x4 tail) becomes a small
  convolution to stride^2 x the channels followed by a pixel shuffle. It multiplies more zeros, yet runs about
  twice as fast on a CPU, where transposed convolutions get no well-tuned kernels.
- A pixel shuffle right after an ungrouped convolution in a sequence (that tail; in the shipped networks
  no other) reads the convolution's output channels in phase-major order, which the convolution's weights
  are permuted to give (`PhaseShuffle`).
All rewrites give the same outputs up to float rounding; the engine applies them to its private copy.
"""

import copy

import torch
from torch import nn


def optimize_for_inference(model: nn.Module, subpixel: bool = True) -> nn.Module:
    """Apply the rewrites in place on `model` (which must be in eval mode) and return it.

    subpixel=False keeps transposed convolutions and pixel shuffles as they are (only batch norms are
    folded): a graph of standard operators, for export.
    """
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            _fold_batch_norms(module)
    if subpixel:
        _replace_transposed(model)
        for module in list(model.modules()):
            if isinstance(module, nn.Sequential):
                _phase_major_shuffles(module)
    return model


class PhaseShuffle(nn.Module):
    """`nn.PixelShuffle(scale)` for input channels in phase-major order.

    Input (N, scale^2 * C, H, W) whose channel (ry * scale + rx) * C + c holds output pixel
    (scale * i + ry, scale * j + rx) of channel c (PixelShuffle reads channel c * scale^2 + ry * scale + rx);
    output (N, C, scale * H, scale * W) in channels-last memory. From channels-last input each output pixel's
    C values are then adjacent in the input too, so the copy moves scale * C contiguous values at a time: on
    batches of FSRCNN's tail (48 channels, 124x236) it took half the time of `F.pixel_shuffle`.
    """

    def __init__(self, scale: int):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        s = self.scale
        phases = x.permute(0, 2, 3, 1).reshape(batch, height, width, s, s, channels // (s * s))
        pixels = phases.permute(0, 1, 3, 2, 4, 5).reshape(batch, height * s, width * s, -1)
        return pixels.permute(0, 3, 1, 2)


def _phase_major_shuffles(sequence: nn.Sequential) -> None:
    layers = list(sequence)
    for index in range(len(layers) - 1):
        conv, shuffle = layers[index], layers[index + 1]
        if isinstance(conv, nn.Conv2d) and conv.groups == 1 and type(shuffle) is nn.PixelShuffle:
            sequence[index] = phase_major(conv, shuffle.upscale_factor)
            sequence[index + 1] = PhaseShuffle(shuffle.upscale_factor)


@torch.no_grad()
def phase_major(conv: nn.Conv2d, scale: int) -> nn.Conv2d:
    """`conv` with its output channels reordered from c * scale^2 + phase to phase * C + c (PhaseShuffle)."""
    channels = conv.out_channels // (scale * scale)
    order = torch.arange(conv.out_channels).view(channels, scale * scale).t().reshape(-1)
    reordered = copy.deepcopy(conv)
    reordered.weight.copy_(conv.weight[order])
    if conv.bias is not None:
        reordered.bias.copy_(conv.bias[order])
    return reordered


def _replace_transposed(model: nn.Module) -> None:
    for name, child in list(model.named_children()):
        replacement = subpixel_equivalent(child) if isinstance(child, nn.ConvTranspose2d) else None
        if replacement is not None:
            setattr(model, name, replacement)
        else:
            _replace_transposed(child)


def _fold_batch_norms(sequence: nn.Sequential) -> None:
    layers = list(sequence)
    for index in range(len(layers) - 1):
        conv, norm = layers[index], layers[index + 1]
        if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats:
            sequence[index] = fold_batch_norm(conv, norm)
            sequence[index + 1] = nn.Identity()


@torch.no_grad()
def fold_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution computing norm(conv(x)) with the norm's running statistics."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    )
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    fused.bias.copy_((bias - norm.running_mean) * scale + norm.bias)
    return fused


@torch.no_grad()
def subpixel_equivalent(deconv: nn.ConvTranspose2d) -> nn.Module | None:
    """Conv + PixelShuffle equal to `deconv`, or None where the rewrite does not apply.

    For output row y = s*i + r, the transposed convolution sums input rows i - t with kernel row
    s*t + r + p over every integer t that keeps that kernel row inside the kernel. So each of the s*s output
    phases is an ordinary convolution of the input over a few taps t; stacking the phases as channels and
    shuffling them into place gives the same output.
    """
    stride, kernel, padding = deconv.stride[0], deconv.kernel_size[0], deconv.padding[0]
    square = deconv.stride[1] == stride and deconv.kernel_size[1] == kernel and deconv.padding[1] == padding
    exact = kernel + deconv.output_padding[0] - 2 * padding - stride == 0  # output = stride x input
    if not square or not exact or deconv.groups != 1 or deconv.dilation != (1, 1) or stride < 2:
        return None
    taps = [
        t
        for t in range(-kernel, kernel + 1)
        if any(0 <= stride * t + r + padding < kernel for r in range(stride))
    ]
    reach = max(abs(t) for t in taps)
    size = 2 * reach + 1
    in_channels, out_channels = deconv.in_channels, deconv.out_channels
    weight = torch.zeros(out_channels, stride, stride, in_channels, size, size)
    for ry in range(stride):
        for ty in taps:
            ky = stride * ty + ry + padding
            if not 0 <= ky < kernel:
                continue
            for rx in range(stride):
                for tx in taps:
                    kx = stride * tx + rx + padding
                    if 0 <= kx < kernel:
                        # conv tap j reads input row i + j - reach, i.e. t = reach - j
                        weight[:, ry, rx, :, reach - ty, reach - tx] = deconv.weight[:, :, ky, kx].t()
    conv = nn.Conv2d(in_channels, out_channels * stride * stride, size, padding=reach)
    conv.weight.copy_(weight.reshape(out_channels * stride * stride, in_channels, size, size))
    bias = deconv.bias if deconv.bias is not None else torch.zeros(out_channels)
    conv.bias.copy_(bias.repeat_interleave(stride * stride))
    return nn.Sequential(conv, nn.PixelShuffle(stride)).to(deconv.weight.device, deconv.weight.dtype)
