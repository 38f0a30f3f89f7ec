"""The Python-backend bootstrap of every model in this repository (Triton's Python backend).

Triton loads ``<model>/<version>/model.py``; the repository keeps this one file and
``glimpse3d.core.triton.server.prepare_repository`` copies it into each model's version directory
(local runs, tests, the Triton image's build). The model's ``config.pbtxt`` names what it serves in
its ``handler`` parameter (``glimpse3d.core.triton.python_model.TritonPythonModel`` reads it).
"""

import os
import site
import sys

# Triton's Python stub ignores PYTHONPATH: the project's environment comes first when named.
_before = list(sys.path)
for _path in filter(None, os.environ.get("GLIMPSE3D_TRITON_SITE_PACKAGES", "").split(os.pathsep)):
    site.addsitedir(_path)
sys.path[:] = [p for p in sys.path if p not in _before] + _before

from glimpse3d.core.triton.python_model import TritonPythonModel  # noqa: E402

__all__ = ["TritonPythonModel"]
