"""One inference engine for `upscale`, `bench` and validation during training."""

from classsr_cli.engine.upscaler import Layout, Upscaler, upscale_array

__all__ = ["Layout", "Upscaler", "upscale_array"]
