"""classsr: x4 super-resolution (and denoising) of large images with ClassSR (Kong et al., CVPR 2021)."""

__version__ = "0.1.0"
