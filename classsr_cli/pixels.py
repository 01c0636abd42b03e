"""Pixel values between integer samples (as image files store them) and floats in [0, 1] (as the engine,
the networks and the metrics take them). The one conversion each way, so that an array upscaled in Python
holds the very values a file written by `classsr upscale` holds.

- integer -> float: uint8 / 255 and uint16 / 65535, computed in float32;
- float -> integer: scaled to the type's maximum, rounded half up, clipped to the type's range; NaN
  becomes 0.

MATLAB's conversion of 0-255 floats (bicubic LR images) rounds half away from zero and is a different
meaning: `imaging.bicubic`'s.
"""

import numpy as np

SAMPLE_TYPES = (np.uint8, np.uint16)


def unit_from_samples(samples: np.ndarray) -> np.ndarray:
    """uint8 or uint16 samples as float32 in [0, 1] (divided by 255 or 65535). TypeError for other types."""
    samples = np.asarray(samples)
    if samples.dtype not in SAMPLE_TYPES:
        raise TypeError(f"samples must be uint8 or uint16, got {samples.dtype}")
    return np.divide(samples, float(np.iinfo(samples.dtype).max), dtype=np.float32)


def samples_from_unit(image: np.ndarray, dtype=np.uint8) -> np.ndarray:
    """Floats in [0, 1] as integer samples of `dtype` (uint8: 0-255, uint16: 0-65535), the way image files
    are written: scaled in float32, rounded half up, clipped; NaN becomes 0. Same shape."""
    dtype = np.dtype(dtype)
    if dtype not in SAMPLE_TYPES:
        raise TypeError(f"samples are uint8 or uint16, not {dtype}")
    max_value = float(np.iinfo(dtype).max)
    scaled = np.multiply(image, max_value, dtype=np.float32)
    scaled += 0.5
    np.fmax(scaled, 0.0, out=scaled)  # fmax, unlike clip, also turns NaN into 0
    np.fmin(scaled, max_value, out=scaled)
    return scaled.astype(dtype)


def unit_to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] as 8-bit samples, as a saved PNG holds it (`samples_from_unit`)."""
    return samples_from_unit(image, np.uint8)
