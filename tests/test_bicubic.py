"""The MATLAB-compatible bicubic imresize against values derived by hand and a slow reference loop."""

import math

import numpy as np
import pytest

from classsr_cli.imaging.bicubic import (
    cubic,
    imresize,
    matlab_uint8,
    output_length,
    resize_matrix,
    resize_taps,
)


def reference_resize_1d_weights(in_length: int, out_length: int, scale: float) -> np.ndarray:
    """Dense (out, in) weights written straight from the definition, one output pixel at a time.

    For output pixel i (1-based), centre u = i / scale + (1 - 1/scale) / 2; every input coordinate k in a wide
    window gets weight h(u - k) with h(x) = s * cubic(s * x), s = min(scale, 1) (antialiasing when shrinking);
    coordinates outside 1..n are folded back symmetrically (0 -> 1, -1 -> 2, n + 1 -> n, ...); the weights of
    each output pixel are normalised to sum to 1.
    """
    s = min(scale, 1.0)
    matrix = np.zeros((out_length, in_length))
    for i in range(1, out_length + 1):
        u = i / scale + 0.5 * (1 - 1 / scale)
        total = 0.0
        for k in range(math.floor(u - 3 / s) - 1, math.ceil(u + 3 / s) + 2):
            weight = s * float(cubic(np.array(s * (u - k))))
            folded = k
            while not 1 <= folded <= in_length:  # symmetric: reflect about the half-pixel edges
                folded = 1 - folded if folded < 1 else 2 * in_length + 1 - folded
            matrix[i - 1, folded - 1] += weight
            total += weight
        matrix[i - 1] /= total
    return matrix


def reference_imresize(image: np.ndarray, scale: float) -> np.ndarray:
    """2-D resize as the outer product of the 1-D reference weights (no pass order involved)."""
    rows = reference_resize_1d_weights(image.shape[0], output_length(image.shape[0], scale), scale)
    cols = reference_resize_1d_weights(image.shape[1], output_length(image.shape[1], scale), scale)
    if image.ndim == 2:
        return rows @ image @ cols.T
    return np.stack([rows @ image[:, :, c] @ cols.T for c in range(image.shape[2])], axis=-1)


def test_cubic_kernel_values():
    # Keys a = -0.5: 1.5|x|^3 - 2.5|x|^2 + 1 on [0, 1], -0.5|x|^3 + 2.5|x|^2 - 4|x| + 2 on (1, 2]
    x = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, -0.5])
    expected = [1.0, 0.8671875, 0.5625, 0.2265625, 0.0, -0.0703125, -0.0625, -0.0234375, 0.0, 0.0, 0.5625]
    np.testing.assert_allclose(cubic(x), expected, atol=1e-15)


def test_matlab_literal_row_halved():
    # imresize([1 2 3 4], 0.5), worked by hand from MATLAB's documented algorithm (MATLAB not run here):
    # output 1 is centred at u = 1/0.5 + 0.5 * (1 - 2) = 1.5; antialiasing widens the kernel to 8, so taps
    # at k = -2..5 with weights 0.5 * cubic(0.5 * (1.5 - k)) = [-0.01171875, -0.03515625, 0.11328125,
    # 0.43359375, 0.43359375, 0.11328125, -0.03515625, -0.01171875] (sum 1); symmetric padding reads
    # k = -2..5 as pixels [3, 2, 1, 1, 2, 3, 4, 4], giving 1.4609375 (= 187/128); output 2 is 5 minus that by
    # symmetry. The single row stays one row: ceil(1 * 0.5) = 1 and every tap folds onto it. (The value
    # sometimes quoted, [1.5781 3.4219], does not follow from the definition.)
    np.testing.assert_allclose(
        imresize(np.array([[1.0, 2, 3, 4]]), 0.5), [[1.4609375, 3.5390625]], atol=1e-12
    )
    # without antialiasing (MATLAB's 'Antialiasing', false) the taps are k = 0..3 with cubic(+-0.5) = 0.5625
    # and cubic(+-1.5) = -0.0625 over pixels [1, 1, 2, 3]: 1.4375
    np.testing.assert_allclose(
        imresize(np.array([[1.0, 2, 3, 4]]), 0.5, antialias=False), [[1.4375, 3.5625]], atol=1e-12
    )


def test_matlab_literal_upscale_doubles():
    # imresize([1 2], 2): output 1 centred at u = 0.75; taps k = -1..2 with cubic(1.75, 0.75, -0.25, -1.25)
    # = [-0.0234375, 0.2265625, 0.8671875, -0.0703125] over pixels [2, 1, 1, 2] -> 0.90625; output 2 at
    # u = 1.25: cubic(2.25, 1.25, 0.25, -0.75, -1.75) over [1, 1, 1, 2, 2] -> 1.203125; the rest by
    # symmetry (3 - v)
    out = imresize(np.array([[1.0, 2.0]]), 2)
    assert out.shape == (2, 4)
    np.testing.assert_allclose(out[0], [0.90625, 1.203125, 1.796875, 2.09375], atol=1e-12)
    np.testing.assert_allclose(out[1], out[0])


def test_constant_image_stays_constant():
    image = np.full((23, 17, 3), 0.37)
    for scale in (0.25, 0.5, 0.6, 0.73, 1.5, 2, 4):
        out = imresize(image, scale)
        assert out.shape[:2] == (math.ceil(23 * scale), math.ceil(17 * scale))
        np.testing.assert_allclose(out, 0.37, atol=1e-12)
    np.testing.assert_allclose(imresize(image, output_shape=(7, 40)), 0.37, atol=1e-12)


def test_linear_ramp_is_reproduced_inside():
    # the cubic kernel reproduces straight lines, so away from the borders output i (1-based) of a ramp 1..n
    # equals its centre u = i / s + (1 - 1/s) / 2; at x1/4 the kernel reaches 8 pixels each side
    ramp = np.arange(1, 65, dtype=np.float64)[None, :].repeat(3, axis=0)
    out = imresize(ramp, output_shape=(3, 16))[0]
    centres = np.arange(1, 17) * 4 - 1.5
    inside = (centres - 8 >= 1) & (centres + 8 <= 64)
    assert inside.sum() >= 10
    np.testing.assert_allclose(out[inside], centres[inside], atol=1e-12)


@pytest.mark.parametrize("scale", [0.25, 0.5, 0.6, 0.75, 2.0, 4.0])
def test_matches_slow_reference_on_known_pattern(scale):
    pattern = np.add.outer(np.arange(8) * 3.0, np.arange(8) * 5.0) % 17 + np.eye(8) * 10  # 8x8, no symmetry
    np.testing.assert_allclose(imresize(pattern, scale), reference_imresize(pattern, scale), atol=1e-10)


def test_matches_slow_reference_on_random_colour_image():
    image = np.random.default_rng(3).random((13, 11, 3))
    for scale in (0.25, 0.3, 0.9, 3.0):
        np.testing.assert_allclose(imresize(image, scale), reference_imresize(image, scale), atol=1e-10)


def test_output_sizes_are_ceil_of_scaled_size():
    assert imresize(np.zeros((5, 5)), 0.5).shape == (3, 3)
    assert imresize(np.zeros((10, 7)), 0.7).shape == (7, 5)  # 10 * 0.7 = 7.000000000000001 is 7, not 8
    assert imresize(np.zeros((1, 4)), 0.5).shape == (1, 2)
    assert imresize(np.zeros((9, 6, 3)), output_shape=(4, 2)).shape == (4, 2, 3)


def test_dtypes_and_argument_errors():
    assert imresize(np.zeros((8, 8), dtype=np.float32), 0.5).dtype == np.float32
    assert imresize(np.zeros((8, 8), dtype=np.uint8), 0.5).dtype == np.float64
    with pytest.raises(ValueError):
        imresize(np.zeros((8, 8)))
    with pytest.raises(ValueError):
        imresize(np.zeros((8, 8)), 0.5, output_shape=(4, 4))
    with pytest.raises(ValueError):
        imresize(np.zeros((2, 8, 8, 3)), 0.5)


def test_scale_one_is_identity():
    image = np.random.default_rng(0).random((6, 9, 3))
    np.testing.assert_array_equal(imresize(image, 1.0), image)
    weights, indices = resize_taps(9, 9, 1.0)
    assert weights.shape[1] == 1 and np.all(weights == 1) and np.all(indices[:, 0] == np.arange(9))


def test_resize_matrix_batches_small_images():
    # the dense matrix used to upscale many sub-images at once agrees with imresize
    lr = np.random.default_rng(1).random((32, 32))
    matrix = resize_matrix(32, 128, 4.0)
    np.testing.assert_allclose(matrix @ lr @ matrix.T, imresize(lr, 4), atol=1e-12)


def test_to_uint8_rounds_half_up_and_clips():
    values = np.array([0.49, 0.5, 1.5, 2.5, 254.5, -3.0, 300.0])
    np.testing.assert_array_equal(matlab_uint8(values), [0, 1, 2, 3, 255, 0, 255])


def test_interior_agrees_with_pillow_bicubic():
    # an independent implementation: Pillow's BICUBIC is the same a = -0.5 kernel, widened when shrinking,
    # with the same pixel centres; it treats borders differently, so only pixels whose taps stay inside count
    image_module = pytest.importorskip("PIL.Image")
    image = np.random.default_rng(2).random((48, 64)).astype(np.float32)
    ours = imresize(image.astype(np.float64), 0.25)
    theirs = np.asarray(image_module.fromarray(image, mode="F").resize((16, 12), image_module.BICUBIC))
    np.testing.assert_allclose(ours[3:-3, 3:-3], theirs[3:-3, 3:-3], atol=1e-5)


@pytest.mark.parametrize(
    "arguments",
    [{"scale": 0.6}, {"scale": 0.9}, {"scale": 4}, {"output_shape": (50, 39)}, {"output_shape": (203, 80)}],
)
def test_the_tensor_path_matches_the_numpy_path(arguments):
    import torch

    from classsr_cli.imaging.bicubic import imresize_tensor, matlab_uint8_tensor

    image = (np.random.default_rng(0).random((203, 157, 3)) * 255).astype(np.float32)
    expected = imresize(image, **arguments)
    # channels first, with a batch dimension in front: the leading dimensions are carried along
    result = imresize_tensor(torch.from_numpy(image).permute(2, 0, 1)[None], **arguments)[0].permute(1, 2, 0)
    assert result.dtype == torch.float32 and tuple(result.shape) == expected.shape
    np.testing.assert_allclose(result.numpy(), expected, rtol=0, atol=1e-4)
    assert np.array_equal(matlab_uint8_tensor(result).numpy(), matlab_uint8(expected))


def test_the_tensor_path_computes_integers_in_float32_and_checks_its_arguments():
    import torch

    from classsr_cli.imaging.bicubic import imresize_tensor

    pixels = torch.arange(64, dtype=torch.uint8).reshape(8, 8)
    assert imresize_tensor(pixels, scale=0.5).dtype == torch.float32
    assert torch.equal(imresize_tensor(pixels, scale=1.0), pixels.float())
    for bad in ({}, {"scale": 0.5, "output_shape": (4, 4)}, {"scale": -1.0}, {"output_shape": (0, 4)}):
        with pytest.raises(ValueError):
            imresize_tensor(pixels, **bad)
    with pytest.raises(ValueError, match="H, W"):
        imresize_tensor(torch.zeros(5), scale=0.5)


def test_enlarging_into_a_channels_last_target_adds_the_enlargement():
    import torch

    from classsr_cli.imaging.bicubic import enlarge_add_, imresize_tensor

    torch.manual_seed(0)
    for channels, scale, size in [(3, 4, (9, 13)), (1, 2, (5, 7)), (3, 3, (6, 4))]:
        image = torch.rand(2, channels, *size, dtype=torch.float64)
        target = torch.rand(2, channels, size[0] * scale, size[1] * scale, dtype=torch.float64)
        expected = target + imresize_tensor(image, scale=scale, fast=True)
        into = target.contiguous(memory_format=torch.channels_last)
        assert enlarge_add_(into, image, scale) is into
        assert (into - expected).abs().max() < 1e-12
    with pytest.raises(ValueError, match="channels-last"):
        enlarge_add_(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 2, 2), 4)  # a plain NCHW target
    with pytest.raises(ValueError, match="channels-last"):
        wrong_size = torch.zeros(1, 3, 8, 12).contiguous(memory_format=torch.channels_last)
        enlarge_add_(wrong_size, torch.zeros(1, 3, 2, 2), 4)
