"""FLOPs and parameters of one forward pass on a 32x32 LR sub-image.

Two conventions:
- paper: 2 x multiply-adds of every convolution and linear layer, each counted at its output size.
  A transposed convolution is then charged k*k*Cin*Cout per *output* pixel, as the official code does
  (biases, activations, pooling and interpolation are not counted). These are the numbers in the paper.
- executed: what the hardware actually multiplies. For a transposed convolution that is k*k*Cin*Cout/groups
  per *input* pixel, stride^2 times less than the paper's count.
"""

from dataclasses import dataclass

import torch
from torch import nn

PATCH = 32


@dataclass(frozen=True)
class Cost:
    params: int
    flops: int  # paper convention
    executed_flops: int


def count_params(module: nn.Module) -> int:
    """Trainable and fixed parameters (batch-norm statistics are buffers and not counted)."""
    return sum(p.numel() for p in module.parameters())


def measure(module: nn.Module, patch: int = PATCH, channels: int = 3) -> Cost:
    """Run one sub-image through `module` and add up its multiply-adds layer by layer."""
    paper = executed = 0

    def on_conv(layer: nn.Conv2d, inputs, output):
        nonlocal paper, executed
        per_output = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
        paper += output.numel() * per_output
        executed += output.numel() * per_output

    def on_transposed(layer: nn.ConvTranspose2d, inputs, output):
        nonlocal paper, executed
        kernel = layer.kernel_size[0] * layer.kernel_size[1]
        out_pixels = output.shape[0] * output.shape[2] * output.shape[3]
        paper += out_pixels * layer.in_channels * layer.out_channels * kernel
        executed += inputs[0].numel() * layer.out_channels // layer.groups * kernel

    def on_linear(layer: nn.Linear, inputs, output):
        nonlocal paper, executed
        paper += output.numel() * layer.in_features
        executed += output.numel() * layer.in_features

    hooks = []
    for layer in module.modules():
        if isinstance(layer, nn.ConvTranspose2d):
            hooks.append(layer.register_forward_hook(on_transposed))
        elif isinstance(layer, nn.Conv2d):
            hooks.append(layer.register_forward_hook(on_conv))
        elif isinstance(layer, nn.Linear):
            hooks.append(layer.register_forward_hook(on_linear))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(torch.zeros(1, channels, patch, patch))
    finally:
        for hook in hooks:
            hook.remove()
        module.train(was_training)
    return Cost(count_params(module), 2 * paper, 2 * executed)


def classsr_costs(model) -> dict:
    """The `classsr flops --json` document for a ClassSR model (branches simple -> hard)."""
    classifier = measure(model.classifier)
    branches = []
    for branch in model.branches:
        cost = measure(branch)
        branches.append(
            {
                "width": branch.width,
                "params": cost.params,
                "flops": cost.flops,
                "executed_flops": cost.executed_flops,
            }
        )
    return {
        "scale": model.scale,
        "patch": PATCH,
        "classifier": {"params": classifier.params, "flops": classifier.flops},
        "branches": branches,
        "params": count_params(model),
    }


def family_costs(family: str, widths=None, classes: int | None = None) -> dict:
    """`classsr_costs` of an untrained ClassSR model of `family` (any case) with these branch widths, or the
    paper's preset for `classes` (default 3), with the family's name ("model"). ModelError for an unknown
    family or widths it does not allow."""
    from classsr_cli.models import create, get_family

    name = get_family(family).name
    return {"model": name, **classsr_costs(create(name, widths, classes))}
