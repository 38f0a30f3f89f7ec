"""Contract tests every backend passes, in the style of diffusers' ``PipelineTesterMixin``.

Layers:
- :class:`BackendContract` (here): what any backend owes (lifecycle, options, determinism, weights,
  serving over gRPC);
- one mixin per service API (``tests/contracts/<service>.py``): how to call it, its dummy inputs,
  its declared output shapes and dtypes, its bad inputs;
- one small class per backend (``tests/**/test_contract_<service>.py``): ``backend`` and
  ``get_dummy_components`` plus that backend's known-answer tests.

``tests/unit/test_backend_contracts.py`` fails when an installed backend entry point has no
contract class. The ``loaded`` fixture (tests/conftest.py) is the class's backend, made by
``make(tiny_model_dir)`` and loaded once per class.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest

from glimpse3d.core.artifacts import LEGACY_TENANT, FileArtifactStore, tenant_scope
from glimpse3d.core.backend import Backend
from glimpse3d.core.backends import BackendRegistry
from glimpse3d.core.errors import InvalidInput, NotReady
from glimpse3d.core.models import ModelMissing
from glimpse3d.core.rpc import create_channel
from glimpse3d.core.service import ServiceSettings, running_in_process

# (service, backend) -> the contract class that covers it (filled as test modules are imported).
CONTRACTS: dict[tuple[str, str], type] = {}


def cover_every_backend(service: str, mixin: type, namespace: dict[str, Any],
                        skip: tuple[str, ...] = ("triton",)) -> None:
    """Give every registered backend of ``service`` that has no contract class yet a default one
    (``Test<Name>(mixin)`` in ``namespace``, default options), so that a new backend is covered by
    its entry point alone. ``skip``: backends whose classes live in another module (``triton``)."""
    for name in BackendRegistry(service).names():
        if name in skip or (service, name) in CONTRACTS:
            continue
        class_name = "Test" + "".join(part.capitalize() for part in re.split(r"[^0-9A-Za-z]+", name))
        namespace[class_name] = type(class_name, (mixin,), {"backend": name, "__module__": namespace["__name__"]})


class BackendContract:
    """Mixin for ``class TestFoo(<Service>Contract)``; see the module docstring."""

    # -- set by the per-backend class ------------------------------------------------------------ #
    backend: ClassVar[str] = ""
    # -- set by the service mixin ----------------------------------------------------------------- #
    service: ClassVar[str] = ""
    api: ClassVar[type[Backend]] = Backend  # the service's API base class
    server_module: ClassVar[Any] = None  # glimpse3d.services.<service>.server
    stub: ClassVar[Callable[[grpc.aio.Channel], Any] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.backend and cls.service and cls.__name__.startswith("Test"):
            CONTRACTS[(cls.service, cls.backend)] = cls

    # -- hooks: per backend ----------------------------------------------------------------------- #
    def get_dummy_components(self, model_dir: Path) -> dict[str, Any]:
        """Keyword options that make the backend small and fast (tiny models, low resolution)."""
        return {}

    # -- hooks: per service ----------------------------------------------------------------------- #
    def get_dummy_inputs(self, seed: int = 0) -> dict[str, Any]:
        raise NotImplementedError

    def call(self, backend: Any, inputs: dict[str, Any]) -> Any:
        """Run the service API method on ``inputs``."""
        raise NotImplementedError

    def check_outputs(self, result: Any, inputs: dict[str, Any]) -> None:
        """Assert the result's shapes, dtypes and ranges are as the API declares."""
        raise NotImplementedError

    def assert_same(self, a: Any, b: Any) -> None:
        """Assert two results of the same call are equal (to float tolerance)."""
        raise NotImplementedError

    def bad_inputs(self) -> list[tuple[dict[str, Any], str]]:
        """(inputs, the field the error must name) pairs."""
        raise NotImplementedError

    async def grpc_scenario(self, stub: Any, store: FileArtifactStore) -> None:
        """One successful RPC against the served backend, with its response checked."""
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------------------------------- #
    bad_option: ClassVar[tuple[str, Any]] = ("", None)  # (option, a value it refuses); "" skips that check

    @property
    def learned(self) -> bool:
        options = getattr(self.backend_class(), "Options", None)
        return options is not None and "model_dir" in options.model_fields

    def backend_class(self) -> type:
        return BackendRegistry(self.service).backend_class(self.backend)

    def make(self, model_dir: Path, **options: Any) -> Any:
        components = {**self.get_dummy_components(model_dir), **options}
        return BackendRegistry(self.service).create(
            self.backend, context={"model_dir": model_dir, "device": "cpu"}, **components)

    # -- the contract ----------------------------------------------------------------------------- #
    def test_is_registered_on_the_service_api(self) -> None:
        cls = self.backend_class()
        assert issubclass(cls, self.api), f"{cls.__name__} does not derive from {self.api.__name__}"
        assert cls.name == self.backend and cls.service == self.service

    def test_not_ready_before_load_and_load_is_idempotent(self, tiny_model_dir: Path) -> None:
        backend = self.make(tiny_model_dir)
        assert not backend.ready
        with pytest.raises(NotReady) as err:
            self.call(backend, self.get_dummy_inputs())
        assert err.value.field == "backend"
        backend.load()
        backend.load()
        assert backend.ready

    def test_an_unknown_option_is_named(self, tiny_model_dir: Path) -> None:
        with pytest.raises(InvalidInput, match="no_such_option") as err:
            self.make(tiny_model_dir, no_such_option=1)
        assert err.value.field == "no_such_option"

    def test_a_bad_option_value_is_named(self, tiny_model_dir: Path) -> None:
        option, value = self.bad_option
        if not option:
            pytest.skip("this backend has no options")
        with pytest.raises(InvalidInput) as err:
            self.make(tiny_model_dir, **{option: value})
        assert err.value.field == option, err.value.message

    def test_a_bad_input_is_named(self, loaded: Any) -> None:
        cases = self.bad_inputs()
        assert cases
        for inputs, field in cases:
            with pytest.raises(InvalidInput) as err:
                self.call(loaded, inputs)
            assert err.value.field == field, (field, err.value.message)

    def test_same_seed_same_output(self, loaded: Any) -> None:
        first = self.call(loaded, self.get_dummy_inputs(seed=3))
        self.assert_same(first, self.call(loaded, self.get_dummy_inputs(seed=3)))

    def test_outputs_have_declared_shapes_and_dtypes(self, loaded: Any) -> None:
        inputs = self.get_dummy_inputs()
        self.check_outputs(self.call(loaded, inputs), inputs)

    def test_missing_weights_raise_model_missing(self, tmp_path: Path) -> None:
        """A learned backend with an empty model directory fails to load with ModelMissing naming
        ``make models``, after switching the hub offline; a weight-free one loads without one."""
        backend = self.make(tmp_path / "empty")
        if not self.learned:
            backend.load()
            assert backend.ready
            return
        os.environ.pop("HF_HUB_OFFLINE", None)
        with pytest.raises(ModelMissing, match="make models"):
            backend.load()
        assert os.environ.get("HF_HUB_OFFLINE") == "1"
        assert not backend.ready

    @pytest.mark.service
    def test_serves_over_grpc(self, tiny_model_dir: Path, tmp_path: Path) -> None:
        import json

        store = FileArtifactStore(tmp_path / "artifacts")
        components = self.get_dummy_components(tiny_model_dir)
        settings = ServiceSettings(backend=self.backend, max_concurrency=1, max_waiting=4,
                                   model_dir=tiny_model_dir, device="cpu",
                                   backend_options=json.dumps(components, default=str) if components else "")
        module = self.server_module

        async def main() -> None:
            async with running_in_process(module.build, [module.SERVICE_NAME], settings, store) as (port, _):
                # Services act only for a tenant: the calls name one (the gateway forwards the caller's).
                with tenant_scope(LEGACY_TENANT):
                    channel = create_channel(f"127.0.0.1:{port}", default_timeout_s=None)
                    try:
                        await self.grpc_scenario(self.stub(channel), store)
                    finally:
                        await channel.close()

        asyncio.run(asyncio.wait_for(main(), 300))
