"""Which branch each tile goes to: the Class-Module's argmax, one fixed branch, or a FLOPs budget."""

import heapq
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from classsr_cli.errors import ModelError
from classsr_cli.flops import measure
from classsr_cli.models import ClassSR


@dataclass
class RoutingPlan:
    """A model seen as M branches (simple -> hard) and an optional Class-Module, with their FLOPs."""

    branches: list[nn.Module]
    classifier: nn.Module | None
    branch_flops: list[int]
    classifier_flops: int
    branch_executed: list[int]  # executed FLOPs per 32x32 sub-image (see flops.py)
    classifier_executed: int
    fixed_branch: int | None = None  # 0-based; every tile goes there and no Class-Module runs
    flops_budget: float | None = None  # fraction of the base network's FLOPs per tile

    @property
    def base_flops(self) -> int:
        return self.branch_flops[-1]

    @property
    def classifies(self) -> bool:
        return self.classifier is not None and self.fixed_branch is None


def plan_for(model: nn.Module, branch: int | None = None, flops_budget: float | None = None) -> RoutingPlan:
    """Routing for a ClassSR model or a single network; `branch` is 1-based as on the command line."""
    if isinstance(model, ClassSR):
        branches, classifier = model.branches, model.classifier
    else:
        branches, classifier = [model], None
    if branch is not None and not 1 <= branch <= len(branches):
        raise ModelError(f"--branch must be 1 to {len(branches)} for this model, got {branch}")
    if flops_budget is not None:
        if not 0 < flops_budget <= 1:
            raise ModelError(f"--flops-budget must be in (0, 1], got {flops_budget}")
        if branch is not None:
            raise ModelError("--flops-budget and --branch exclude each other")
    fixed = branch - 1 if branch is not None else (0 if classifier is None else None)
    costs = [measure(b) for b in branches]
    classifier_cost = measure(classifier) if classifier is not None else None
    return RoutingPlan(
        branches=list(branches),
        classifier=classifier,
        branch_flops=[cost.flops for cost in costs],
        classifier_flops=classifier_cost.flops if classifier is not None else 0,
        branch_executed=[cost.executed_flops for cost in costs],
        classifier_executed=classifier_cost.executed_flops if classifier is not None else 0,
        fixed_branch=fixed,
        flops_budget=flops_budget,
    )


@dataclass
class RoutingTally:
    """Running totals over all tiles routed so far (an image, or a whole folder)."""

    num_classes: int
    tiles: int = 0
    class_counts: list[int] = field(default_factory=list)
    flops: int = 0  # paper-convention FLOPs spent, Class-Module included
    executed_flops: int = 0  # what ran: the pieces with their context (or the tiles), Class-Module included
    pixels: int = 0  # LR pixels of the images routed
    # what the same routing would execute with no context, padding or overlap: every LR pixel once on the
    # branch it ran on, and the Class-Module once over every pixel (region tiling counts it)
    ideal_executed_flops: int = 0

    def __post_init__(self):
        if not self.class_counts:
            self.class_counts = [0] * self.num_classes

    def add(self, classes: np.ndarray, plan: RoutingPlan, classifier_executed: int | None = None) -> None:
        """Count tiles that ran on `classes`; `classifier_executed`: what the Class-Module executed for
        them, where that is not its FLOPs per tile times the tiles (the engine's band-wide features)."""
        counts = np.bincount(classes, minlength=self.num_classes)
        self.tiles += int(classes.size)
        self.class_counts = [a + int(b) for a, b in zip(self.class_counts, counts, strict=True)]
        self.flops += int(sum(int(c) * f for c, f in zip(counts, plan.branch_flops, strict=True)))
        if plan.classifies:
            self.flops += int(classes.size) * plan.classifier_flops
            if classifier_executed is None:
                classifier_executed = int(classes.size) * plan.classifier_executed
            self.executed_flops += classifier_executed

    def flops_ratio(self, plan: RoutingPlan) -> float:
        """Paper-convention FLOPs per sub-image against the base network's (the paper's Table 2)."""
        return self.flops / (self.tiles * plan.base_flops) if self.tiles else 0.0

    def executed_ratio(self, plan: RoutingPlan) -> float:
        """Executed FLOPs against the base network run once over every LR pixel (no tiles, no overlap)."""
        plain = self.pixels * plan.branch_executed[-1] / 1024  # executed FLOPs are per 32x32 sub-image
        return self.executed_flops / plain if plain else 0.0

    def engine_overhead(self) -> float:
        """Executed FLOPs against the ideal of the same routing: what context, padding and the cut into
        pieces and chunks add (region tiling; 0 where not counted)."""
        return self.executed_flops / self.ideal_executed_flops if self.ideal_executed_flops else 0.0

    def fractions(self) -> list[float]:
        """The share of the tiles each class got (zeros before any tile)."""
        return [count / self.tiles if self.tiles else 0.0 for count in self.class_counts]


def apply_budget(probs: np.ndarray, plan: RoutingPlan, allowance: float) -> np.ndarray:
    """Argmax classes, then demote tiles one class at a time until their FLOPs fit `allowance`.

    The next demotion is always the tile the Class-Module is least sure belongs to its current class,
    so confident hard tiles keep their branch longest. `allowance` counts branch FLOPs only.
    """
    classes = probs.argmax(axis=1)
    flops = np.asarray(plan.branch_flops, dtype=np.float64)
    spent = float(flops[classes].sum())
    if spent <= allowance:
        return classes
    heap = [(float(probs[i, c]), i) for i, c in enumerate(classes) if c > 0]
    heapq.heapify(heap)
    while spent > allowance and heap:
        _, tile = heapq.heappop(heap)
        current = classes[tile]
        spent -= flops[current] - flops[current - 1]
        classes[tile] = current - 1
        if current - 1 > 0:
            heapq.heappush(heap, (float(probs[tile, current - 1]), tile))
    return classes
