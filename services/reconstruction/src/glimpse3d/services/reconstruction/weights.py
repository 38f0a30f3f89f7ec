"""Production weights of the reconstruction service's learned backends (torch-free; read by
``make models``). Each learned backend keeps its sources next to its code."""

from __future__ import annotations

from glimpse3d.core.models import ModelSource
from glimpse3d.services.reconstruction.backends.lgm.source import SOURCES as _LGM
from glimpse3d.services.reconstruction.backends.triposr.source import SOURCES as _TRIPOSR

MODELS: tuple[ModelSource, ...] = (*_TRIPOSR, *_LGM)
