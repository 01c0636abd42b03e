"""SR families, the Class-Module and the ClassSR container."""

from classsr_cli.models.classsr import ClassSR
from classsr_cli.models.registry import (
    FAMILIES,
    PREFERENCE,
    TASKS,
    FamilySpec,
    create,
    create_base,
    family_for_task,
    get_family,
    list_families,
    resolve_widths,
)
from classsr_cli.models.spec import spec_of

__all__ = [
    "TASKS",
    "ClassSR",
    "FAMILIES",
    "PREFERENCE",
    "FamilySpec",
    "create",
    "create_base",
    "family_for_task",
    "get_family",
    "list_families",
    "resolve_widths",
    "spec_of",
]
