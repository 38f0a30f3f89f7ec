"""One registry pattern for the services' backends.

Each service lists its backends by name with the import path of their class; a backend's module
is imported only when it is selected, so choosing a weight-free backend never imports a model
library. Learned and Triton backends register the same way when they arrive.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from glimpse3d.core.errors import InvalidInput

log = logging.getLogger(__name__)
B = TypeVar("B")


class BackendRegistry(Generic[B]):
    """``kind`` names the service in messages; ``entries`` maps backend name -> "module:Class"."""

    def __init__(self, kind: str, entries: Mapping[str, str]) -> None:
        self.kind = kind
        self._entries = dict(entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def create(self, name: str, *, context: Mapping[str, Any] | None = None, **options: Any) -> B:
        """Instantiate (not load) the backend called ``name`` with keyword ``options``.

        ``context`` holds service-wide settings (``model_dir``, ``device``); each is passed only when
        the backend's constructor takes a parameter of that name, so weight-free backends ignore them.
        An explicit option of the same name wins over the context."""
        if name not in self._entries:
            raise InvalidInput(
                f"unknown {self.kind} backend {name!r}; valid names: {', '.join(self.names())}", field="backend"
            )
        module_name, _, class_name = self._entries[name].partition(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        params = inspect.signature(cls).parameters
        for key, value in (context or {}).items():
            if key in params and key not in options:
                options[key] = value
        try:
            inspect.signature(cls).bind(**options)
        except TypeError as err:
            raise InvalidInput(f"bad options for {self.kind} backend {name!r}: {err}", field="backend_options") from err
        backend = cls(**options)
        log.info("%s backend created", self.kind, extra={"backend": name, "options": sorted(options)})
        return backend


C = TypeVar("C")


def config_with_overrides(config_cls: type[C], config: C | None, overrides: Mapping[str, object], backend: str) -> C:
    """A backend's frozen config dataclass: ``config`` (or the defaults) with keyword ``overrides``
    applied; an unknown option is an :class:`InvalidInput` naming it."""
    known = {f.name for f in dataclasses.fields(config_cls)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InvalidInput(f"unknown {backend} backend option(s): {', '.join(unknown)}", field=unknown[0])
    return dataclasses.replace(config or config_cls(), **overrides)  # type: ignore[type-var]
