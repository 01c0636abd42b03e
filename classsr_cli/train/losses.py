"""The ClassSR losses (paper section 3.6) for any number of classes M.

`probs` is the (B, M) softmax output of the Class-Module. The normalisations follow the official code,
which shifts the Class-Loss to be >= 0 and divides the Average-Loss by 4B/M; the weights 2000:1:6 of the
paper (1000:0.5:3 in the code, the same ratio) then balance the three terms.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossWeights:
    image: float = 2000.0  # w1, L1 Image-Loss
    classes: float = 1.0  # w2, Class-Loss
    average: float = 6.0  # w3, Average-Loss: raise it when the classes collapse onto one branch
    # Not in the paper: cross-entropy towards the difficulty classes of prepare-data, for a Class-Module
    # whose plain losses collapse onto one branch (they did on our photos); 0 = the paper's losses.
    labels: float = 0.0
    # Not in the paper: the expected cost of routing under the branches' own errors (`expected_cost`), for
    # data relabelled by `classsr train relabel`; 0 = not used.
    cost: float = 0.0


def image_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """Mean absolute error (the L1 Image-Loss)."""
    return F.l1_loss(sr.float(), hr.float())


def class_loss(probs: torch.Tensor) -> torch.Tensor:
    """Mean over samples of (M-1) - sum_{i<j} |P_i - P_j|: 0 for one-hot outputs, M-1 for uniform ones."""
    m = probs.shape[1]
    pairs = torch.triu_indices(m, m, offset=1, device=probs.device)
    spread = (probs[:, pairs[0]] - probs[:, pairs[1]]).abs().sum(dim=1)
    return ((m - 1) - spread).mean()


def expected_cost(probs: torch.Tensor, costs: torch.Tensor) -> torch.Tensor:
    """Mean over samples of sum_k P_k * cost_k: the cost routing by these probabilities is expected to pay.

    `costs` (B, M) are `train.relabel.routing_costs` (each branch's error plus lambda x its FLOPs, less the
    row's least), so the loss weighs each sub-image by how much its choice matters, where cross-entropy
    towards the argmin label weighs every sub-image alike. 0 when all probability sits on the cheapest
    branch. A cost-sensitive classification loss (e.g. Elkan, "The foundations of cost-sensitive learning",
    IJCAI 2001, for the costs; the expectation makes it differentiable)."""
    return (probs.float() * costs.float()).sum(dim=1).mean()


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) with a gradient: every process's share of the sum gets the summed gradient.

    DistributedDataParallel then averages the parameter gradients over the N processes, which cancels the
    factor N, leaving exactly the gradient of the loss of the whole batch.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def average_loss(probs: torch.Tensor, world_size: int = 1) -> torch.Tensor:
    """sum_i |sum_b P_i(x_b) - B/M| / (4B/M): 0 when every class gets B/M of the batch's probability mass.

    With `world_size` > 1 the per-class sums are added up over all processes first (with gradients), so a
    batch split across GPUs is balanced as one batch of B = local batch x world_size samples.
    """
    sums = probs.float().sum(dim=0)
    batch = probs.shape[0]
    if world_size > 1:
        sums = _SumOverProcesses.apply(sums)
        batch *= world_size
    share = batch / probs.shape[1]
    return (sums - share).abs().sum() / (4.0 * share)


def classsr_loss(
    sr: torch.Tensor | None,
    hr: torch.Tensor,
    probs: torch.Tensor,
    weights: LossWeights,
    world_size: int = 1,
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """w1 * Image-Loss + w2 * Class-Loss + w3 * Average-Loss (+ the optional label guidance or expected
    cost), and the unweighted terms for the logs. `sr` may be None when w1 is 0 (the branches need not
    run). `labels`: (B,) classes, or (B, M) route costs (data opened with `route_costs`)."""
    terms = {"class": class_loss(probs.float()), "average": average_loss(probs, world_size)}
    total = weights.classes * terms["class"] + weights.average * terms["average"]
    if sr is not None:
        terms["l1"] = image_loss(sr, hr)
        total = total + weights.image * terms["l1"]
    if labels is not None and labels.ndim == 2:
        terms["cost"] = expected_cost(probs, labels)
        total = total + weights.cost * terms["cost"]
    elif weights.labels and labels is not None:
        terms["label"] = F.nll_loss(torch.log(probs.float().clamp_min(1e-8)), labels.long())
        total = total + weights.labels * terms["label"]
    return total, terms
