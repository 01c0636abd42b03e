"""Rewrite a network, for inference only, into an equivalent one that runs faster.

- Batch norm after a convolution is folded into that convolution's weights and bias (CARN's fusion blocks):
  one pass over the features instead of two.
- A transposed convolution whose output is exactly `stride` x its input (FSRCNN's x4 tail) becomes a small
  convolution to stride^2 x the channels followed by a pixel shuffle. It multiplies more zeros, yet runs about
  twice as fast on a CPU, where transposed convolutions get no well-tuned kernels.
Both rewrites give the same outputs up to float rounding; the engine applies them to its private copy.
"""

import torch
from torch import nn


def optimize_for_inference(model: nn.Module, subpixel: bool = True) -> nn.Module:
    """Apply the rewrites in place on `model` (which must be in eval mode) and return it.

    subpixel=False keeps transposed convolutions as they are (only batch norms are folded).
    """
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            _fold_batch_norms(module)
    if subpixel:
        _replace_transposed(model)
    return model


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
