"""The ClassSR container: a Class-Module and M SR branches of rising capacity."""

from collections.abc import Sequence

import torch
from torch import nn

from classsr_cli.models.classifier import ClassModule


class ClassSR(nn.Module):
    """M branches (`net1` simple ... `netM` hard, the official key names) behind one Class-Module.

    `forward` is the training forward of the paper (Eq. 1): every branch runs and the outputs are
    mixed by the softmax probabilities. `route` + `forward_routed` are the inference path: each
    sub-image goes to its chosen branch, one batched call per branch.
    """

    def __init__(self, branches: Sequence[nn.Module]):
        super().__init__()
        if not 2 <= len(branches) <= 5:
            raise ValueError(f"ClassSR needs 2 to 5 branches, got {len(branches)}")
        self.classifier = ClassModule(len(branches))
        self.num_classes = len(branches)
        for index, branch in enumerate(branches, start=1):
            self.add_module(f"net{index}", branch)
        self.scale = branches[0].scale

    @property
    def branches(self) -> list[nn.Module]:
        return [getattr(self, f"net{index}") for index in range(1, self.num_classes + 1)]

    @property
    def widths(self) -> list[int]:
        return [branch.width for branch in self.branches]

    def forward(self, x: torch.Tensor, mix: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Training forward: (sum_i P_i(x) * branch_i(x), class probabilities).

        mix=False returns (None, probabilities) without running the branches: for losses that need no image.
        """
        probs = torch.softmax(self.classifier(x), dim=1)
        if not mix:
            return None, probs
        out = sum(probs[:, i, None, None, None] * branch(x) for i, branch in enumerate(self.branches))
        return out, probs

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """The branch index (0-based) the Class-Module picks for each sub-image."""
        return self.classifier(x).argmax(dim=1)

    def forward_routed(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Run each sub-image through its branch, one batched call per non-empty class."""
        out = x.new_empty(x.shape[0], x.shape[1], x.shape[2] * self.scale, x.shape[3] * self.scale)
        for index, branch in enumerate(self.branches):
            chosen = (classes == index).nonzero(as_tuple=True)[0]
            if chosen.numel():
                out[chosen] = branch(x[chosen])
        return out
