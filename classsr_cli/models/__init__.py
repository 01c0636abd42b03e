"""SR families, the Class-Module and the ClassSR container."""

from classsr_cli.models.classsr import ClassSR
from classsr_cli.models.registry import (
    FAMILIES,
    create,
    create_base,
    get_family,
    list_families,
    resolve_widths,
)

__all__ = ["ClassSR", "FAMILIES", "create", "create_base", "get_family", "list_families", "resolve_widths"]
