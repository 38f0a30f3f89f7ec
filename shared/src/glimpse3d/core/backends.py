"""Backends are found through entry points: a service's pyproject lists each of its backends in the
group ``glimpse3d.backends.<service>`` (``name = "module:Class"``). A backend's module is imported only
when it is selected, so choosing a weight-free backend never imports torch or a model library.
Weights (``glimpse3d.weights``), tiny test models (``glimpse3d.tiny_models``) and services
(``glimpse3d.services``) are found the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

from glimpse3d.core.errors import InvalidInput

log = logging.getLogger(__name__)
B = TypeVar("B")

BACKENDS_GROUP = "glimpse3d.backends"
WEIGHTS_GROUP = "glimpse3d.weights"
TINY_MODELS_GROUP = "glimpse3d.tiny_models"
SERVICES_GROUP = "glimpse3d.services"


def plugins(group: str) -> dict[str, EntryPoint]:
    """The installed entry points of ``group`` by name (a later duplicate name is an error)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        if ep.name in found and found[ep.name].value != ep.value:
            raise RuntimeError(f"entry point {ep.name!r} of {group} is declared twice: "
                               f"{found[ep.name].value} and {ep.value}")
        found[ep.name] = ep
    return found


def service_names() -> list[str]:
    """The backend services installed here, in pipeline order when they are the five of the product."""
    order = ("depth", "reconstruction", "multiview", "diffusion", "backprojection")
    names = list(plugins(SERVICES_GROUP))
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


class BackendRegistry(Generic[B]):
    """The backends of service ``kind``: the entry points of ``glimpse3d.backends.<kind>``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.group = f"{BACKENDS_GROUP}.{kind}"

    def entries(self) -> dict[str, EntryPoint]:
        return plugins(self.group)

    def names(self) -> list[str]:
        return sorted(self.entries())

    def backend_class(self, name: str) -> type[B]:
        """The class registered as ``name`` (imports its module); InvalidInput for an unknown name."""
        entries = self.entries()
        if name not in entries:
            raise InvalidInput(
                f"unknown {self.kind} backend {name!r}; valid names: {', '.join(sorted(entries)) or 'none installed'}",
                field="backend")
        return entries[name].load()

    def create(self, name: str, *, context: Mapping[str, Any] | None = None, **options: Any) -> B:
        """Instantiate (not load) the backend called ``name`` with keyword ``options``.

        ``context`` holds service-wide settings (``model_dir``, ``device``); each is passed only when
        the backend's options have a field of that name, so weight-free backends ignore them. An
        explicit option of the same name wins over the context."""
        cls: Any = self.backend_class(name)
        fields = cls.Options.model_fields
        for key, value in (context or {}).items():
            if key in fields and key not in options:
                options[key] = value
        backend = cls(**options)
        log.info("%s backend created", self.kind, extra={"backend": name, "options": sorted(options)})
        return backend

