"""classsr: x4 super-resolution (and denoising) of large images with ClassSR (Kong et al., CVPR 2021).

The public API (`classsr_cli.api`, loaded on first use so that the package's light modules stay light):

    import classsr_cli

    restorer = classsr_cli.load()                                # the best shipped model
    restorer.upscale_file("photo.png", "photo-x4.png")           # as `classsr upscale photo.png photo-x4.png`
    restored = restorer.upscale(array)                           # numpy (H, W[, C]) -> (4H, 4W[, C])
"""

__version__ = "0.1.0"

_API = ("ClassMap", "EngineOptions", "Restorer", "default_model", "list_models", "load", "load_network")

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from classsr_cli import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
