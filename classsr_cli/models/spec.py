"""What the project knows about a family, beside its network: each `models/<family>.py` states its SPEC.

A spec holds the paper's facts (branch widths per class count, the FLOPs it reports), what the network is
(task, scale, allowed widths), what the engine needs from it (real context around each region piece, piece
height and chunk width on a CPU) and how an official checkpoint of it is recognised. `models/registry.py`
collects them.

The family's network class is marked with `@SPEC.describes`: the one place where the class gets its spec
(`spec_of(network)`) and, as class attributes, the engine's needs the spec states.
"""

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

# what a spec says the engine needs from a branch, given to the network class as attributes of these names
ENGINE_NEEDS = ("engine_context", "cpu_piece_rows", "cpu_chunk_cols")


@dataclass(frozen=True)
class FamilySpec:
    """One family of networks: the paper's settings, the engine's needs and checkpoint detection."""

    name: str  # the name users give (--model, `load(model=...)`)
    title: str  # the paper's name: "ClassSR-<title>", "<title>-O"
    build: Callable[[int], nn.Module]  # a network of this family with `width` channels, untrained
    presets: dict[int, tuple[int, ...]]  # class count -> branch widths, simple -> hard (the paper's)
    task: str = "upscale"  # "upscale" (x`scale` super-resolution) or "denoise" (same size out)
    scale: int = 4  # output pixels per input pixel along each side
    width_multiple: int = 1  # widths must be a multiple of this (CARN's grouped convolutions)
    min_width: int = 4
    branch_lr: float | None = None  # stage 1's learning rate where the paper's 1e-3 does not suit the family
    # LR pixels of real image the engine puts around every region piece; None: the engine's default
    engine_context: int | None = None
    # cell rows of a region piece on a CPU; None: the engine's default
    cpu_piece_rows: int | None = None
    # cell columns of a chunk (the Class-Module's pass, the output canvases) on a CPU; None: the default
    cpu_chunk_cols: int | None = None
    # a state-dict key that only this family's networks have in the official checkpoints, whose tensor's
    # first dimension is the network's width; None: no official layout is known (our .safetensors only)
    checkpoint_key: str | None = None
    # the paper's FLOPs of the 3-class preset's branches, simple -> hard, per 32x32 LR sub-image, in its
    # convention (`flops.py`: 2 x multiply-adds, a transposed convolution counted at its output size)
    paper_flops: tuple[float, ...] | None = None

    def describes(self, network: type[nn.Module]) -> type[nn.Module]:
        """Class decorator for the family's network: `network.spec` becomes this spec, and each engine need
        it states (ENGINE_NEEDS, where not None) a class attribute of the same name, which the engine reads
        from a branch. Returns `network`."""
        network.spec = self
        for need in ENGINE_NEEDS:
            if getattr(self, need) is not None:
                setattr(network, need, getattr(self, need))
        return network

    @property
    def base_width(self) -> int:
        """The width of the -O network, the base: the hardest branch's, the same for every class count."""
        return self.presets[3][-1]

    def widths_for(self, classes: int) -> tuple[int, ...]:
        """The paper's widths for this class count, or evenly spaced ones from the smallest to the base."""
        if classes in self.presets:
            return self.presets[classes]
        low, high = min(self.presets[3]), self.base_width
        step = (high - low) / (classes - 1)
        widths = [round((low + i * step) / self.width_multiple) * self.width_multiple for i in range(classes)]
        widths[-1] = high
        return tuple(widths)


def spec_of(network: nn.Module) -> FamilySpec | None:
    """The spec of the family `network` is a network of (`FamilySpec.describes`), or that a module standing
    in for one carries as its `spec`; None for any other module (a ClassSR container)."""
    spec = getattr(network, "spec", None)
    return spec if isinstance(spec, FamilySpec) else None
