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
(training data made on a GPU).
"""

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
):
    """`imresize` for a torch tensor (..., H, W), channels first, on its own device.

    Same sizes, taps, pass order and tap order as `imresize`, so float32 results match it to rounding. Any
    leading dimensions (channels, batch) are carried along. Integer input is computed in float32 (float64
    input stays float64); the result is float, neither rounded nor clipped (`matlab_uint8_tensor` rounds it).
    Raises ValueError for a bad scale or shape, or fewer than 2 dimensions.
    """
    import torch

    if image.ndim < 2:
        raise ValueError(f"expected a (..., H, W) tensor, got shape {tuple(image.shape)}")
    work = image if image.dtype in (torch.float32, torch.float64) else image.to(torch.float32)
    in_h, in_w = work.shape[-2:]
    lengths, scales = _output_size(in_h, in_w, scale, output_shape)
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


def matlab_uint8_tensor(image):
    """`matlab_uint8` for a torch tensor of 0-255 values: half away from zero, clipped to [0, 255], uint8."""
    import torch

    return (image + 0.5).floor_().clamp_(0, 255).to(torch.uint8)
