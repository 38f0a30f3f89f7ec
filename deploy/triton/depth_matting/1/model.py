"""Triton Python model ``depth_matting``: glimpse3d.services.depth.triton.MattingHandler."""

import os
import site
import sys

# Triton's Python stub ignores PYTHONPATH: the project's environment comes first when named.
_before = list(sys.path)
for _path in filter(None, os.environ.get("GLIMPSE3D_TRITON_SITE_PACKAGES", "").split(os.pathsep)):
    site.addsitedir(_path)
sys.path[:] = [p for p in sys.path if p not in _before] + _before

from glimpse3d.core.triton.python_model import make_model  # noqa: E402

TritonPythonModel = make_model("glimpse3d.services.depth.triton:MattingHandler")
