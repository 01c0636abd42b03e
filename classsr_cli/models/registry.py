"""Families by name: their builders, the paper's branch widths, and `create(family, widths=...)`."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import nn

from classsr_cli.errors import ModelError
from classsr_cli.models.carn import CARN
from classsr_cli.models.classsr import ClassSR
from classsr_cli.models.dncnn import DnCNN
from classsr_cli.models.fsrcnn import FSRCNN
from classsr_cli.models.rcan import RCAN
from classsr_cli.models.srresnet import SRResNet


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    build: Callable[[int], nn.Module]
    base_width: int
    presets: dict[int, tuple[int, ...]]  # class count -> branch widths, simple -> hard (the paper's)
    width_multiple: int = 1  # widths must be a multiple of this (CARN's grouped convolutions)
    min_width: int = 4
    task: str = "upscale"  # "upscale" (x4 super-resolution) or "denoise" (same size out)
    branch_lr: float | None = None  # stage 1's learning rate where the paper's 1e-3 does not suit the family
    notes: dict = field(default_factory=dict)

    def widths_for(self, classes: int) -> tuple[int, ...]:
        """The paper's widths for this class count, or evenly spaced ones from the smallest to the base."""
        if classes in self.presets:
            return self.presets[classes]
        low, high = min(self.presets[3]), self.base_width
        step = (high - low) / (classes - 1)
        widths = [round((low + i * step) / self.width_multiple) * self.width_multiple for i in range(classes)]
        widths[-1] = high
        return tuple(widths)


FAMILIES: dict[str, Family] = {
    "fsrcnn": Family(
        "fsrcnn",
        "FSRCNN",
        lambda w: FSRCNN(d=w),
        56,
        {2: (16, 56), 3: (16, 36, 56), 4: (16, 29, 43, 56), 5: (16, 26, 36, 46, 56)},
    ),
    "carn": Family("carn", "CARN-M", lambda w: CARN(nf=w), 64, {3: (36, 52, 64)}, width_multiple=4),
    "srresnet": Family("srresnet", "SRResNet", lambda w: SRResNet(nf=w), 64, {3: (36, 52, 64)}),
    "rcan": Family("rcan", "RCAN", lambda w: RCAN(n_feats=w), 64, {3: (36, 50, 64)}, min_width=16),
    # DnCNN (batch norm, 17 layers) sat at "output = input" for 300+ steps at 1e-3 with Adam and batch 16 and
    # then learned one colour channel at a time; at 1e-4 (DnCNN's usual rate with Adam) it learned at once
    "dncnn": Family(
        "dncnn", "DnCNN", lambda w: DnCNN(width=w), 64, {3: (38, 52, 64)}, task="denoise", branch_lr=1e-4
    ),
}
TASKS = ("upscale", "denoise")
# per task, the most capable family first: the default model, and the default ranking network of prepare-data
PREFERENCE = {"upscale": ("rcan", "srresnet", "carn", "fsrcnn"), "denoise": ("dncnn",)}


def list_families(task: str | None = None) -> list[str]:
    """Family names, all or those of one task ("upscale" or "denoise")."""
    return [name for name, family in FAMILIES.items() if task is None or family.task == task]


def family_for_task(name: str, task: str) -> "Family":
    """The family called `name`, refused in one line if it does another task (e.g. DnCNN for upscale)."""
    family = get_family(name)
    if family.task != task:
        kind = {"upscale": "an upscaling", "denoise": "a denoising"}[family.task]
        raise ModelError(
            f"{family.title} is {kind} model: use `classsr {family.task}` "
            f"(models for {task}: {', '.join(list_families(task))})"
        )
    return family


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name.lower()]
    except KeyError:
        raise ModelError(f"unknown model '{name}': choose one of {', '.join(FAMILIES)}") from None


def resolve_widths(
    family: str, classes: int | None = None, widths: Sequence[int] | None = None
) -> tuple[int, ...]:
    """Check user widths (or pick the preset for `classes`, default 3) and return them simple -> hard."""
    fam = get_family(family)
    if widths:
        widths = tuple(int(w) for w in widths)
        if classes is not None and classes != len(widths):
            raise ModelError(f"--classes {classes} does not match {len(widths)} widths")
    else:
        classes = 3 if classes is None else classes
        if not 2 <= classes <= 5:
            raise ModelError(f"the number of classes must be 2 to 5, got {classes}")
        widths = fam.widths_for(classes)
    if not 2 <= len(widths) <= 5:
        raise ModelError(f"ClassSR takes 2 to 5 branch widths, got {len(widths)}")
    for width in widths:
        if width < fam.min_width or width % fam.width_multiple:
            raise ModelError(
                f"{fam.title} width {width} is not allowed: at least {fam.min_width}"
                + (f" and a multiple of {fam.width_multiple}" if fam.width_multiple > 1 else "")
            )
    if list(widths) != sorted(widths):
        raise ModelError(f"branch widths must rise from simple to hard, got {','.join(map(str, widths))}")
    return widths


def create_base(family: str, width: int | None = None) -> nn.Module:
    """A single SR network of the family (the base network when width is None)."""
    fam = get_family(family)
    width = fam.base_width if width is None else width
    resolve_widths(family, widths=(width, width))
    return fam.build(width)


def create(family: str, widths: Sequence[int] | None = None, classes: int | None = None) -> ClassSR:
    """A ClassSR model of the family with the given branch widths (default: the paper's 3-class preset)."""
    fam = get_family(family)
    return ClassSR([fam.build(w) for w in resolve_widths(family, classes, widths)])
