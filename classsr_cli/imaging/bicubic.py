"""MATLAB-compatible bicubic resize: the `imresize` that super-resolution papers use to make LR images.

What MATLAB's `imresize(image, scale)` (method 'bicubic', the default) does, reimplemented from its
documented behaviour:
- the cubic convolution kernel of Keys with a = -0.5;
- when shrinking, the kernel is stretched by 1/scale (antialiasing), so every input pixel contributes;
- output pixel i (1-based) is centred on input coordinate i/scale + (1 - 1/scale)/2;
- pixels beyond the border mirror symmetrically, the edge pixel repeated: ... 2 1 | 1 2 3 ... n | n n-1 ...;
- the output size is ceil(input size * scale); the dimension with the smaller scale is resized first.

Each axis is a sparse linear map: for every output pixel a few (weight, input index) taps. They are applied
as a short loop over taps, each a vectorised gather-multiply-add over the whole image. `imresize` works on
numpy arrays; `imresize_tensor` applies the same taps, in the same order, to torch tensors on any device
(training data made on a GPU). Its fast path (`fast=True`, for the engine's back-projection) runs integer
factors as depthwise convolutions of the same taps; `enlarge_add_` adds such an enlargement into an image
in place, without making it. `pillow_resize_tensor` is the variant whose kernel is
renormalised at the edges instead of mirroring the image (Pillow's, PyTorch's antialiased interpolation).

Converting back to 8 bits: `matlab_uint8` (0-255 values, MATLAB's rounding); floats in [0, 1] are
`pixels.unit_to_uint8`'s.
"""

import functools
import math
from collections.abc import Sequence

import numpy as np

KERNEL_WIDTH = 4.0  # the support of the cubic kernel, [-2, 2]
# ceil(size * scale) would turn 10 * 0.7 = 7.000000000000001 into 8; products this close to an integer are one
SIZE_TOLERANCE = 1e-9


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's and PIL's bicubic)."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def output_length(in_length: int, scale: float) -> int:
    return max(1, math.ceil(in_length * scale - SIZE_TOLERANCE))


def resize_taps(
    in_length: int, out_length: int, scale: float, antialias: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The taps of a 1-D resize: weights (out_length, P) float64 and 0-based input indices (out_length, P).

    Row i holds the normalised weights of output pixel i and the (mirrored) input pixels they apply to.
    """
    if in_length < 1 or out_length < 1 or scale <= 0:
        raise ValueError(f"cannot resize {in_length} pixels to {out_length} at scale {scale}")
    width = KERNEL_WIDTH
    if scale < 1 and antialias:
        width = KERNEL_WIDTH / scale

        def kernel(d):
            return scale * cubic(scale * d)
    else:
        kernel = cubic
    centres = np.arange(1, out_length + 1, dtype=np.float64) / scale + 0.5 * (1 - 1 / scale)
    first = np.floor(centres - width / 2)
    taps = math.ceil(width) + 2
    positions = first[:, None] + np.arange(taps)[None, :]  # 1-based input coordinates, may lie outside
    weights = kernel(centres[:, None] - positions)
    weights /= weights.sum(axis=1, keepdims=True)
    # symmetric padding: coordinate k outside [1, n] reads pixel mirror[(k - 1) mod 2n]
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length)[::-1]])
    indices = mirror[np.mod(positions.astype(np.int64) - 1, 2 * in_length)]
    # taps that are zero for every output pixel (the kernel's ends) cost work and change nothing
    used = np.any(weights != 0, axis=0)
    return weights[:, used], indices[:, used]


def resize_matrix(
    in_length: int, out_length: int, scale: float | None = None, antialias: bool = True
) -> np.ndarray:
    """The dense (out_length, in_length) matrix of a 1-D resize, for batches of small images: Y = A X A^T."""
    scale = out_length / in_length if scale is None else scale
    weights, indices = resize_taps(in_length, out_length, scale, antialias)
    matrix = np.zeros((out_length, in_length), dtype=np.float64)
    rows = np.broadcast_to(np.arange(out_length)[:, None], indices.shape)
    np.add.at(matrix, (rows, indices), weights)  # mirrored taps may hit the same pixel twice
    return matrix


def _resize_axis(image: np.ndarray, axis: int, weights: np.ndarray, indices: np.ndarray) -> np.ndarray:
    shape = list(image.shape)
    shape[axis] = weights.shape[0]
    broadcast = [1] * image.ndim
    broadcast[axis] = weights.shape[0]
    weights = weights.astype(image.dtype)
    # two buffers for the whole pass: fresh temporaries per tap cost more in page faults than in arithmetic
    out = np.empty(shape, dtype=image.dtype)
    np.take(image, indices[:, 0], axis=axis, out=out)
    out *= weights[:, 0].reshape(broadcast)
    gathered = np.empty_like(out)
    for tap in range(1, weights.shape[1]):
        np.take(image, indices[:, tap], axis=axis, out=gathered)
        gathered *= weights[:, tap].reshape(broadcast)
        out += gathered
    return out


def imresize(
    image: np.ndarray,
    scale: float | None = None,
    output_shape: Sequence[int] | None = None,
    antialias: bool = True,
) -> np.ndarray:
    """Resize an (H, W) or (H, W, C) image like MATLAB's `imresize(image, scale)` or `imresize(image, [h w])`.

    Give exactly one of `scale` (both axes; output ceil(H * scale) x ceil(W * scale)) or `output_shape`
    (h, w), whose per-axis scales are h / H and w / W. The result is float: float32 input stays float32
    (fast, for photos), anything else is computed in float64. No rounding or clipping: values may overshoot
    the input range slightly, as MATLAB's do before it converts back to an integer type.
    """
    if (scale is None) == (output_shape is None):
        raise ValueError("give exactly one of scale and output_shape")
    if image.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {image.shape}")
    work = image if image.dtype in (np.float32, np.float64) else image.astype(np.float64)
    in_h, in_w = work.shape[:2]
    lengths, scales = _output_size(in_h, in_w, scale, output_shape)
    if lengths == (in_h, in_w) and scales == (1.0, 1.0):
        return work.copy()  # the scale-1 kernel is the identity
    # MATLAB resizes the dimension with the smaller scale first (fewer pixels for the second pass)
    for axis in sorted((0, 1), key=lambda a: scales[a]):
        if lengths[axis] == work.shape[axis] and scales[axis] == 1.0:
            continue
        weights, indices = resize_taps(work.shape[axis], lengths[axis], scales[axis], antialias)
        work = _resize_axis(work, axis, weights, indices)
    return work


def matlab_uint8(image: np.ndarray) -> np.ndarray:
    """Values on the 0-255 scale (as `imresize` returns them for 8-bit images) as uint8, the way MATLAB's
    `uint8()` converts: rounded half away from zero, clipped to [0, 255]; same shape.

    Not `pixels.unit_to_uint8`, which takes floats in [0, 1] (image files' convention)."""
    return np.clip(np.floor(image + 0.5), 0, 255).astype(np.uint8)


# -- torch tensors ---------------------------------------------------------------------------------------


def _output_size(
    in_h: int, in_w: int, scale: float | None, output_shape: Sequence[int] | None
) -> tuple[tuple[int, int], tuple[float, float]]:
    """((out_h, out_w), (scale_h, scale_w)) as `imresize` resolves them; ValueError for bad arguments."""
    if (scale is None) == (output_shape is None):
        raise ValueError("give exactly one of scale and output_shape")
    if scale is not None:
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        return (output_length(in_h, scale), output_length(in_w, scale)), (float(scale), float(scale))
    out_h, out_w = (int(v) for v in output_shape)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"output shape must be positive, got {tuple(output_shape)}")
    return (out_h, out_w), (out_h / in_h, out_w / in_w)


def imresize_tensor(
    image,
    scale: float | None = None,
    output_shape: Sequence[int] | None = None,
    antialias: bool = True,
    *,
    fast: bool = False,
):
    """`imresize` for a torch tensor (..., H, W), channels first, on its own device.

    Same sizes, taps, pass order and tap order as `imresize`, so float32 results match it to rounding. Any
    leading dimensions (channels, batch) are carried along. Integer input is computed in float32 (float64
    input stays float64); the result is float, neither rounded nor clipped (`matlab_uint8_tensor` rounds it).
    Raises ValueError for a bad scale or shape, or fewer than 2 dimensions.

    `fast`: where `fast_factor` allows (enlarging by a whole s; shrinking by 1/s, antialiased, where H and W
    divide by s) the resize runs as depthwise convolutions, about twice as fast on a CPU, in the input's own
    floating dtype (half precision included): the same taps summed in another order, so results differ
    from `imresize`'s by rounding only (float64: below 1e-12). Other resizes take the taps path.
    """
    import torch

    if image.ndim < 2:
        raise ValueError(f"expected a (..., H, W) tensor, got shape {tuple(image.shape)}")
    in_h, in_w = image.shape[-2:]
    lengths, scales = _output_size(in_h, in_w, scale, output_shape)
    if fast and scales[0] == scales[1] and (antialias or scales[0] > 1):
        factor = fast_factor(in_h, in_w, scales[0])
        if factor is not None and lengths == _fast_lengths(in_h, in_w, factor, scales[0] > 1):
            work = image if image.is_floating_point() else image.to(torch.float32)
            if work.ndim == 4:  # (N, C, H, W) as it is, memory format included
                return _enlarge(work, factor) if scales[0] > 1 else _shrink(work, factor)
            batch = work.reshape(-1, *work.shape[-3:]) if work.ndim > 2 else work[None, None]
            resized = _enlarge(batch, factor) if scales[0] > 1 else _shrink(batch, factor)
            return resized.reshape(*work.shape[:-2], *resized.shape[-2:])
    work = image if image.dtype in (torch.float32, torch.float64) else image.to(torch.float32)
    if lengths == (in_h, in_w) and scales == (1.0, 1.0):
        return work.clone()
    dims = (work.ndim - 2, work.ndim - 1)
    for axis in sorted((0, 1), key=lambda a: scales[a]):
        if lengths[axis] == work.shape[dims[axis]] and scales[axis] == 1.0:
            continue
        weights, indices = resize_taps(work.shape[dims[axis]], lengths[axis], scales[axis], antialias)
        weights = torch.from_numpy(weights).to(device=work.device, dtype=work.dtype)
        indices = torch.from_numpy(indices).to(work.device)
        shape = [1] * work.ndim
        shape[dims[axis]] = lengths[axis]
        out = work.index_select(dims[axis], indices[:, 0]) * weights[:, 0].reshape(shape)
        for tap in range(1, weights.shape[1]):
            out += work.index_select(dims[axis], indices[:, tap]) * weights[:, tap].reshape(shape)
        work = out
    return work


def pillow_resize_tensor(image, factor: float):
    """Pillow's bicubic resize of (N, C, H, W) by `factor`, as PyTorch's antialiased `F.interpolate` runs it.

    `imresize`'s kernel (Keys, a = -0.5, stretched by 1/factor when shrinking) at the pixel centres of
    `factor`, but where taps fall beyond the image it drops them and renormalises the rest, where `imresize`
    mirrors the image: equal to `imresize` a few pixels away from the edges, not at them. Output
    floor(H * factor) x floor(W * factor), in the input's dtype. For sizes `fast_factor` turns down.
    """
    import torch.nn.functional as F

    return F.interpolate(image, scale_factor=factor, mode="bicubic", align_corners=False, antialias=True)


# -- integer factors as depthwise convolutions (imresize_tensor's fast path) ------------------------------


def fast_factor(height: int, width: int, scale: float) -> int | None:
    """The whole s of a resize by `scale` = s or 1/s that runs as convolutions (`imresize_tensor(fast=True)`):
    enlarging by s > 1, or shrinking by 1/s where `height` and `width` divide by s; None otherwise."""
    up, down = round(scale), round(1 / scale)
    if scale > 1 and math.isclose(scale, up):
        return up
    if scale < 1 and math.isclose(1 / scale, down) and height % down == 0 and width % down == 0:
        return down
    return None


def _fast_lengths(height: int, width: int, factor: int, enlarge: bool) -> tuple[int, int]:
    return (height * factor, width * factor) if enlarge else (height // factor, width // factor)


@functools.cache
def _conv_taps(scale: int, upscale: bool) -> tuple[np.ndarray, int]:
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
def _conv_weights(scale: int, upscale: bool, channels: int, dtype, device) -> tuple:
    """Convolution weights of `_conv_taps` for `channels` channels, on `device` in `dtype`: shrinking, one
    depthwise kernel per axis; enlarging, one convolution to scale^2 x channels phase-major channels,
    output channel (ry * scale + rx) * channels + c holding phase (ry, rx) of channel c.

    Kept, so made as ordinary tensors even when first asked for under inference mode: training reuses them.
    """
    import torch

    with torch.inference_mode(False):
        return _make_conv_weights(
            torch.from_numpy(_conv_taps(scale, upscale)[0]).to(device, dtype), upscale, channels
        )


def _make_conv_weights(taps, upscale: bool, channels: int) -> tuple:
    import torch

    phases, size = taps.shape
    if not upscale:  # one pass per axis
        return (
            taps.view(1, 1, size, 1).repeat(channels, 1, 1, 1),
            taps.view(1, 1, 1, size).repeat(channels, 1, 1, 1),
        )
    # one 5x5 kernel per output phase (ry, rx), from each channel to its own phases only
    kernels = torch.einsum("ay,bx->abyx", taps, taps).reshape(phases * phases, 1, 1, size, size)
    own = torch.eye(channels, dtype=taps.dtype, device=taps.device)[None, :, :, None, None]
    return ((kernels * own).reshape(phases * phases * channels, channels, size, size),)


def _enlarged_phases(image, scale: int):
    """The enlargement of (N, C, H, W) by a whole `scale`, as (N, H, W, scale, scale, C): [n, i, j, ry, rx]
    is output pixel (scale * i + ry, scale * j + rx)."""
    import torch
    import torch.nn.functional as F

    batch, channels, height, width = image.shape
    (weights,) = _conv_weights(scale, True, channels, image.dtype, image.device)
    padded = _mirror_pad(_mirror_pad(image, 2, 2), 2, 3).contiguous(memory_format=torch.channels_last)
    phases = F.conv2d(padded, weights).permute(0, 2, 3, 1)
    return phases.reshape(batch, height, width, scale, scale, channels)


def enlarge_add_(target, image, scale: int):
    """target += imresize(image, scale) for a whole `scale` > 1, in place; returns `target`.

    image: (N, C, H, W); target: (N, C, scale*H, scale*W) in channels-last memory, same dtype and device
    (ValueError otherwise). The enlargement's phases (`imresize_tensor(image, scale, fast=True)`'s taps)
    are added straight into the target's pixels, seen as (N, H, W, scale, scale, C): the enlarged image is
    never made (in the engine, FSRCNN on the validation crops, 1% to 9% less time than `target +
    _enlarge(image, scale)` in four comparisons).
    """
    import torch

    batch, channels, height, width = image.shape
    shape = (batch, channels, height * scale, width * scale)
    if tuple(target.shape) != shape or not target.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(f"enlarge_add_ needs a channels-last target of {shape}, got {tuple(target.shape)}")
    pixels = target.permute(0, 2, 3, 1).view(batch, height, scale, width, scale, channels)
    pixels.permute(0, 1, 3, 2, 4, 5).add_(_enlarged_phases(image, scale))
    return target


def _mirror_pad(image, margin: int, dim: int):
    """Pad axis `dim` by `margin` mirrored as MATLAB does (the edge pixel repeated: 1 0 | 0 1 ..)."""
    import torch

    length = image.shape[dim]
    if margin > length:  # a mirror wider than the image: fold the index (rare)
        index = torch.arange(-margin, length + margin, device=image.device).remainder(2 * length)
        return image.index_select(dim, torch.where(index < length, index, 2 * length - 1 - index))
    before = image.narrow(dim, 0, margin).flip(dim)
    after = image.narrow(dim, length - margin, margin).flip(dim)
    return torch.cat([before, image, after], dim=dim)


# Depthwise convolutions run fast on a CPU only in channels-last memory (about 20 times).
def _shrink(image, scale: int):
    import torch
    import torch.nn.functional as F

    margin = _conv_taps(scale, upscale=False)[1]
    vertical, horizontal = _conv_weights(scale, False, image.shape[1], image.dtype, image.device)
    image = image.contiguous(memory_format=torch.channels_last)
    rows = F.conv2d(_mirror_pad(image, margin, 2), vertical, stride=(scale, 1), groups=image.shape[1])
    return F.conv2d(_mirror_pad(rows, margin, 3), horizontal, stride=(1, scale), groups=image.shape[1])


def _enlarge(image, scale: int):
    # phase-major channels: each output pixel's C values lie together, so the shuffle into channels-last
    # output pixels moves scale * C adjacent values at a time (F.pixel_shuffle runs far slower on a CPU)
    phases = _enlarged_phases(image, scale)
    batch, height, width, _, _, channels = phases.shape
    pixels = phases.permute(0, 1, 3, 2, 4, 5).reshape(batch, height * scale, width * scale, channels)
    return pixels.permute(0, 3, 1, 2)


def matlab_uint8_tensor(image):
    """`matlab_uint8` for a torch tensor of 0-255 values: half away from zero, clipped to [0, 255], uint8."""
    import torch

    return (image + 0.5).floor_().clamp_(0, 255).to(torch.uint8)
