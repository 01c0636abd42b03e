"""Families by name, collected from the SPEC of each `models/<family>.py`, and
`create(family, widths=...)`."""

from collections.abc import Sequence

from torch import nn

from classsr_cli.errors import ModelError
from classsr_cli.models import carn, dncnn, fsrcnn, rcan, srresnet
from classsr_cli.models.classsr import ClassSR
from classsr_cli.models.spec import FamilySpec

FAMILIES: dict[str, FamilySpec] = {
    module.SPEC.name: module.SPEC for module in (fsrcnn, carn, srresnet, rcan, dncnn)
}
TASKS = ("upscale", "denoise")
# per task, the most capable family first: the default model, and the default ranking network of prepare-data
PREFERENCE = {"upscale": ("rcan", "srresnet", "carn", "fsrcnn"), "denoise": ("dncnn",)}


def list_families(task: str | None = None) -> list[str]:
    """Family names, all or those of one task ("upscale" or "denoise")."""
    return [name for name, family in FAMILIES.items() if task is None or family.task == task]


def family_for_task(name: str, task: str) -> FamilySpec:
    """The family called `name`, refused in one line if it does another task (e.g. DnCNN for upscale) or
    is unknown (naming the task's families only)."""
    family = get_family(name, task)
    if family.task != task:
        kind = {"upscale": "an upscaling", "denoise": "a denoising"}[family.task]
        raise ModelError(
            f"{family.title} is {kind} model: use `classsr {family.task}` "
            f"(models for {task}: {', '.join(list_families(task))})"
        )
    return family


def get_family(name: str, task: str | None = None) -> FamilySpec:
    """The spec of the family called `name` (any case); ModelError naming the known ones (of `task`, if
    given) otherwise."""
    try:
        return FAMILIES[name.lower()]
    except KeyError:
        raise ModelError(f"unknown model '{name}': choose one of {', '.join(list_families(task))}") from None


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
