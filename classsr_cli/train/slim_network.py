"""The slimmable network: one network of the widest width that runs as any narrower branch of its family.

Each weight of the width-w network is the first entries of the widest one's along every axis (its leading
channels), as in slimmable networks (Yu et al., ICLR 2019) and ARM's any-time super-resolution (Chen et al.,
ECCV 2022); `Slimmable.cut` makes a plain network of any width from it, and `width_of_step` is the cycle of
widths a run trains. Leading-channel slicing fits families whose layers are plain convolutions and pixel
shuffles (SRResNet, RCAN); CARN's grouped convolutions and DnCNN's batch norms do not slice this way and are
refused.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from classsr_cli.errors import ModelError

SLIMMABLE_FAMILIES = ("srresnet", "rcan")


def slice_state(state: dict[str, torch.Tensor], shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """The leading entries of every tensor of `state` along every axis, to the given shapes (views)."""
    sliced = {}
    for key, shape in shapes.items():
        tensor = state[key]
        fits = tensor.dim() == len(shape) and all(
            have >= want for have, want in zip(tensor.shape, shape, strict=True)
        )
        if not fits:
            raise ModelError(f"{key}: {tuple(tensor.shape)} cannot be sliced to {tuple(shape)}")
        sliced[key] = tensor[tuple(slice(0, n) for n in shape)]
    return sliced


class Slimmable(nn.Module):
    """The widest network of a family, run at any of `widths` by slicing its parameters.

    `forward(x, width)` takes LR (N, 3, h, w) in [0, 1] and gives SR (N, 3, 4h, 4w); gradients reach the
    widest network's parameters through the slices. `state_dict()` is the widest network's own, so the
    weights file loads as a plain network of that width.
    """

    def __init__(self, family: str, widths: list[int]):
        super().__init__()
        from classsr_cli.models.registry import create_base, get_family

        if family not in SLIMMABLE_FAMILIES:
            raise ModelError(
                f"slimmable training slices channels, which fits {', '.join(SLIMMABLE_FAMILIES)}, "
                f"not {get_family(family).title}"
            )
        self.family = family
        self.widths = sorted(int(w) for w in widths)
        self.net = create_base(family, self.widths[-1])
        self.scale = self.net.scale
        # a network of each narrower width, for its structure and shapes only: its own weights are unused
        self._skeletons = {w: create_base(family, w) for w in self.widths[:-1]}
        for skeleton in self._skeletons.values():
            skeleton.requires_grad_(False)
        self._shapes = {
            w: {k: v.shape for k, v in s.state_dict().items()} for w, s in self._skeletons.items()
        }

    def state_dict(self, *args, **kwargs):
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        return self.net.load_state_dict(state, strict=strict, assign=assign)

    def forward(self, x: torch.Tensor, width: int | None = None) -> torch.Tensor:
        if width is None or width == self.widths[-1]:
            return self.net(x)
        if width not in self._shapes:
            raise ModelError(f"width {width} is not one of {self.widths}")
        tensors = dict(self.net.named_parameters())
        tensors.update(self.net.named_buffers())
        return functional_call(self._skeletons[width], slice_state(tensors, self._shapes[width]), (x,))

    def cut(self, width: int) -> nn.Module:
        """A plain network of `width` holding this one's leading channels (a copy, in eval mode)."""
        from classsr_cli.models.registry import create_base

        if width == self.widths[-1]:
            state = self.net.state_dict()
        else:
            state = slice_state(self.net.state_dict(), self._shapes[width])
        network = create_base(self.family, width)
        network.load_state_dict({k: v.detach().clone().contiguous() for k, v in state.items()})
        return network.eval()

    def to(self, *args, **kwargs):
        super().to(*args, **kwargs)
        for skeleton in self._skeletons.values():
            skeleton.to(*args, **kwargs)
        return self


def width_of_step(iteration: int, widths: list[int]) -> int:
    """The width trained at 1-based step `iteration`: widest, narrowest, widest, middle, in turn."""
    widths = sorted(widths)
    cycle = [widths[-1], widths[0], widths[-1], widths[len(widths) // 2]] if len(widths) > 1 else widths
    return cycle[(iteration - 1) % len(cycle)]
