"""The model of every ``deploy/triton/<model>`` (Triton's Python backend).

``deploy/triton/model.py``, which :func:`~.server.prepare_repository` copies into each model's
version directory, puts the directories in :data:`SITE_PACKAGES_ENV` first on ``sys.path`` and
re-exports :class:`TritonPythonModel`. The model's ``config.pbtxt`` parameter ``handler``
(``"<module>:<Class>"``, required) names the :class:`Handler` to serve, built around the backend class
the service runs in-process, and ``backend_options`` (JSON) that backend's options. A project error
becomes that request's error response, so the client re-raises the same class. See docs/triton.md.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glimpse3d.core.errors import Glimpse3DError, InvalidInput
from glimpse3d.core.models import default_model_dir
from glimpse3d.core.triton.tensors import encode_error

log = logging.getLogger(__name__)

SITE_PACKAGES_ENV = "GLIMPSE3D_TRITON_SITE_PACKAGES"
HANDLER_PARAMETER = "handler"  # config.pbtxt parameter: the Handler, "module:Class"

Tensors = dict[str, np.ndarray]


class Handler:
    """Server side of one Triton model: built with the model directory, the device and the backend
    options; :meth:`run` maps one request's input tensors to its output tensors.

    By default :meth:`load` creates the in-process backend ``backend_name`` from the service's
    ``registry`` (``"module:NAME"`` of a :class:`~glimpse3d.core.backends.BackendRegistry`), exactly
    as the service would, and loads it into :attr:`backend`."""

    registry = ""
    backend_name = ""

    def __init__(self, model_dir: Path, device: str, options: Mapping[str, Any]) -> None:
        self.model_dir = model_dir
        self.device = device
        self.options = dict(options)
        self.backend: Any = None

    def load(self) -> None:
        registry = _import(self.registry)
        self.backend = registry.create(self.backend_name, context={"model_dir": self.model_dir, "device": self.device},
                                       **self.options)
        self.backend.load()

    def run(self, inputs: Tensors) -> Tensors:
        raise NotImplementedError

    def run_batch(self, batch: Sequence[Tensors]) -> list[Tensors | Glimpse3DError]:
        """Every request of a batch, each answered or failed on its own."""
        results: list[Tensors | Glimpse3DError] = []
        for inputs in batch:
            try:
                results.append(self.run(inputs))
            except Glimpse3DError as err:
                results.append(err)
        return results


def require(inputs: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """Input ``name``, or :class:`InvalidInput` when the request left it out."""
    if name not in inputs:
        raise InvalidInput(f"input tensor {name} is required", field=name)
    return inputs[name]


def _import(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def _device(args: Mapping[str, str]) -> str:
    if str(args.get("model_instance_kind", "CPU")).upper() == "GPU":
        return f"cuda:{int(args.get('model_instance_device_id', 0))}"
    return "cpu"


def _parameters(config: Mapping[str, Any]) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}


def handler_class(model: str, parameters: Mapping[str, str]) -> type[Handler]:
    """The :class:`Handler` subclass the ``handler`` parameter of ``model``'s config names;
    :class:`InvalidInput` naming the model and the parameter when it is missing or names none."""
    path = parameters.get(HANDLER_PARAMETER, "").strip()
    if not path:
        raise InvalidInput(
            f"model {model}: config.pbtxt has no {HANDLER_PARAMETER!r} parameter; add "
            f'parameters {{ key: "{HANDLER_PARAMETER}" value: {{ string_value: "<module>:<Handler class>" }} }}',
            field=HANDLER_PARAMETER)
    module, sep, attr = path.partition(":")
    if not (module and sep and attr):
        raise InvalidInput(f"model {model}: parameter {HANDLER_PARAMETER!r} must be \"<module>:<Handler class>\", "
                           f"got {path!r}", field=HANDLER_PARAMETER)
    try:
        found = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise InvalidInput(f"model {model}: parameter {HANDLER_PARAMETER!r} names {path!r}, which cannot be "
                           f"imported: {type(err).__name__}: {err}", field=HANDLER_PARAMETER) from err
    if not (isinstance(found, type) and issubclass(found, Handler)):
        raise InvalidInput(f"model {model}: parameter {HANDLER_PARAMETER!r} names {path!r}, which is not a "
                           f"{__name__}.Handler subclass", field=HANDLER_PARAMETER)
    return found


class TritonPythonModel:
    """The Python backend's model: the handler and options come from the model's config."""

    def initialize(self, args: dict[str, str]) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        config = json.loads(args["model_config"])
        self.name = config.get("name", args.get("model_name", "?"))
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.input_names = [t["name"] for t in config.get("input", [])]
        self.output_names = [t["name"] for t in config.get("output", [])]
        parameters = _parameters(config)
        handler = handler_class(self.name, parameters)
        raw = parameters.get("backend_options", "") or "{}"
        try:
            options = json.loads(raw)
        except ValueError as err:
            raise InvalidInput(f"model {self.name}: backend_options is not valid JSON: {err}") from None
        if not isinstance(options, dict):
            raise InvalidInput(f"model {self.name}: backend_options must be a JSON object, got {raw!r}")
        self.handler = handler(default_model_dir(), _device(args), options)
        self.handler.load()
        log.info("Triton model %s ready (%s.%s on %s)", self.name, handler.__module__, handler.__qualname__,
                 self.handler.device)

    def execute(self, requests: list[Any]) -> list[Any]:
        # Provided by the Triton server's Python backend at run time; not installable.
        import triton_python_backend_utils as pb_utils  # pyright: ignore[reportMissingImports]

        batch: list[Tensors] = []
        for request in requests:
            inputs: Tensors = {}
            for name in self.input_names:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    arr = _from_tensor(tensor)
                    inputs[name] = arr[0] if self.batched else arr
            batch.append(inputs)
        try:
            results = self.handler.run_batch(batch)
        except Exception as err:  # a bug, not the caller's input: fail this batch, keep serving
            log.exception("model %s failed", self.name)
            results = [Glimpse3DError(f"model {self.name} failed: {type(err).__name__}: {err}")] * len(batch)
        return [self._response(pb_utils, result) for result in results]

    def _response(self, pb_utils: Any, result: Tensors | Glimpse3DError) -> Any:
        if isinstance(result, Glimpse3DError):
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(encode_error(result)))
        missing = [name for name in self.output_names if name not in result]
        if missing:
            err = Glimpse3DError(f"model {self.name} produced no {', '.join(missing)}")
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(encode_error(err)))
        return pb_utils.InferenceResponse(
            output_tensors=[_to_tensor(pb_utils, name, result[name], self.batched) for name in self.output_names])

    def finalize(self) -> None:
        log.info("Triton model %s unloaded", getattr(self, "name", "?"))


def _from_tensor(tensor: Any) -> np.ndarray:
    """A request tensor as a numpy array, through DLPack (with numpy 2, ``Tensor.as_numpy()`` returns
    arrays with wrong strides: every element reads as the first)."""
    from torch.utils.dlpack import from_dlpack

    return from_dlpack(tensor.to_dlpack()).cpu().numpy().copy()


def _to_tensor(pb_utils: Any, name: str, arr: np.ndarray, batched: bool) -> Any:
    """A response tensor through DLPack (with numpy 2, ``pb_utils.Tensor(name, ndarray)`` sends an
    empty tensor)."""
    import torch
    from torch.utils.dlpack import to_dlpack

    data = np.ascontiguousarray(arr[None] if batched else arr)
    return pb_utils.Tensor.from_dlpack(name, to_dlpack(torch.from_numpy(data)))
