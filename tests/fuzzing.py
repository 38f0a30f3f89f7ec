"""Shared pieces of the fuzz tier (tests/unit/test_fuzz_parsers.py, tests/service/test_fuzz_requests.py,
tests/service/test_fuzz_http.py): hypothesis settings profiles, byte mutations of valid files, protobuf
messages drawn from their descriptors, and servers run on a background event loop.

Profiles: ``ci`` (the default; the whole tier takes about two minutes on two cores) and ``long``
(``GLIMPSE3D_FUZZ=long``, what ``make fuzz`` runs: 20 times the examples). Every test names its
``ci`` example count with :func:`fuzz`; the profile scales it.
"""

from __future__ import annotations

import asyncio
import os
import struct
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, contextmanager
from datetime import timedelta
from typing import Any, TypeVar

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

PROFILE = "long" if os.environ.get("GLIMPSE3D_FUZZ", "").strip().lower() == "long" else "ci"
SCALE = {"ci": 1, "long": 20}[PROFILE]

# A slow example is a failure (a hang is one), but the deadline leaves room for a busy 2-core machine.
settings.register_profile(
    "ci",
    deadline=timedelta(seconds=5),
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile(
    "long",
    deadline=timedelta(seconds=10),
    derandomize=False,
    database=None,  # a failure prints its reproduction blob instead of writing .hypothesis/
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def fuzz(max_examples: int, **overrides: Any) -> settings:
    """The active profile with ``max_examples`` (the ``ci`` count; ``long`` runs 20 times as many)."""
    return settings(settings.get_profile(PROFILE), max_examples=max_examples * SCALE, **overrides)


# ---- byte mutations ---------------------------------------------------------------------------------

# Values that hit length, count and size fields where they hurt: empty, one, sign bits, all ones.
_BOUNDARY = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


@st.composite
def mutated(draw: st.DrawFn, seeds: Sequence[bytes], max_ops: int = 6) -> bytes:
    """One of ``seeds`` changed by 1..``max_ops`` edits: byte flips, truncation, deletion, insertion
    of random bytes, and boundary integers (big or little endian, 2 or 4 bytes) written over the data."""
    data = bytearray(draw(st.sampled_from(list(seeds))))
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(("flip", "truncate", "delete", "insert", "integer")))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "integer":
            fmt = draw(st.sampled_from((">I", "<I", ">H", "<H")))
            value = draw(st.sampled_from(_BOUNDARY)) & (0xFFFF if fmt.endswith("H") else 0xFFFFFFFF)
            data[pos : pos + struct.calcsize(fmt)] = struct.pack(fmt, value)
    return bytes(data)


# ---- protobuf messages ------------------------------------------------------------------------------

Overrides = Mapping[str, st.SearchStrategy[Any]]
"""Strategies for particular fields, keyed by the field's full name (``glimpse3d.v1.ExportRequest.name``),
or for every field of a message type, keyed by the type's full name (``glimpse3d.v1.ArtifactRef``);
a repeated field's strategy draws one element."""

_F = FieldDescriptor
_I32, _I64 = (-(2**31), 2**31 - 1), (-(2**63), 2**63 - 1)
_INTS = {
    _F.TYPE_INT32: _I32, _F.TYPE_SINT32: _I32, _F.TYPE_SFIXED32: _I32,
    _F.TYPE_INT64: _I64, _F.TYPE_SINT64: _I64, _F.TYPE_SFIXED64: _I64,
    _F.TYPE_UINT32: (0, 2**32 - 1), _F.TYPE_FIXED32: (0, 2**32 - 1),
    _F.TYPE_UINT64: (0, 2**64 - 1), _F.TYPE_FIXED64: (0, 2**64 - 1),
}  # fmt: skip
# Proto strings are UTF-8: any text without lone surrogates.
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


def _scalar(field: Any) -> st.SearchStrategy[Any]:
    if field.type in _INTS:
        return st.integers(*_INTS[field.type])
    if field.type == _F.TYPE_DOUBLE:
        return st.floats()
    if field.type == _F.TYPE_FLOAT:
        return st.floats(width=32)
    if field.type == _F.TYPE_BOOL:
        return st.booleans()
    if field.type == _F.TYPE_STRING:
        return TEXT
    if field.type == _F.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == _F.TYPE_ENUM:  # proto3 enums are open: unknown numbers arrive too
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-3, 99))
    raise TypeError(f"no strategy for {field.full_name}")


def _element(field: Any, overrides: Overrides, depth: int) -> st.SearchStrategy[Any]:
    if field.full_name in overrides:
        return overrides[field.full_name]
    if field.type == _F.TYPE_MESSAGE and field.message_type.full_name in overrides:
        return overrides[field.message_type.full_name]
    if field.type == _F.TYPE_MESSAGE:
        return messages(field.message_type, overrides, depth - 1)
    return _scalar(field)


def _is_map(field: Any) -> bool:
    return field.type == _F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def messages(message: Any, overrides: Overrides | None = None, depth: int = 4) -> st.SearchStrategy[Message]:
    """Messages of type ``message`` with any subset of fields set to arbitrary values (at most one
    member of each oneof, up to 3 elements a repeated field, nesting down to ``depth``). Fields with
    an override are always drawn from it (its strategy decides how often the value is a bad one)."""
    desc: Any = message if isinstance(message, Descriptor) else message.DESCRIPTOR
    over = dict(overrides or {})
    cls: Callable[[], Message] = message if not isinstance(message, Descriptor) else _class_of(desc)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        msg = cls()
        chosen = {o.name: draw(st.sampled_from([None, *o.fields])) for o in desc.oneofs}
        for field in desc.fields:
            oneof = field.containing_oneof
            if oneof is not None and chosen[oneof.name] is not field:
                continue
            if field.type == _F.TYPE_MESSAGE and depth <= 0 and not _is_map(field):
                continue
            overridden = field.full_name in over or (
                field.type == _F.TYPE_MESSAGE and field.message_type.full_name in over
            )
            if oneof is None and not overridden and not draw(st.booleans()):
                continue
            target = getattr(msg, field.name)
            if _is_map(field):
                entry = field.message_type.fields_by_name
                pairs = st.dictionaries(_scalar(entry["key"]), _element(entry["value"], over, depth), max_size=3)
                for key, value in draw(pairs).items():
                    target[key] = value
            elif field.is_repeated:
                items = draw(st.lists(_element(field, over, depth), max_size=3))
                if field.type == _F.TYPE_MESSAGE:
                    for item in items:
                        target.add().CopyFrom(item)
                else:
                    target.extend(items)
            elif field.type == _F.TYPE_MESSAGE:
                target.CopyFrom(draw(_element(field, over, depth)))
            else:
                setattr(msg, field.name, draw(_element(field, over, depth)))
        return msg

    return build()


def _class_of(desc: Any) -> Callable[[], Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(desc)


# ---- servers on a background loop -------------------------------------------------------------------

T = TypeVar("T")
Starter = Callable[[AsyncExitStack], Coroutine[Any, Any, int]]


class LoopThread:
    """An asyncio loop in a thread: the servers run there while hypothesis calls them synchronously."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Cancel what is still running on the loop (tasks a server left behind), then stop it."""

        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(drain(), timeout=10.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@contextmanager
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    try:
        yield thread
    finally:
        thread.close()


@contextmanager
def serving(thread: LoopThread, starter: Starter) -> Iterator[int]:
    """Run ``starter`` on the loop (it starts a server, registers its shutdown on the stack and returns
    its port); yield the port; shut everything down afterwards."""
    stack = AsyncExitStack()

    async def enter() -> int:
        return await starter(stack)

    port = thread.run(enter())
    try:
        yield port
    finally:
        thread.run(stack.aclose())


class QuickPipeline:
    """Stands in for the five services behind a :class:`GatewayApp`: a fixed small splat for every
    version, a centred square for every matte preview; finishes in milliseconds."""

    def __init__(self, artifacts: Any, splat: Any, camera: Any) -> None:
        self.artifacts = artifacts
        self._splat = splat
        self._camera = camera

    def _put(self) -> Any:
        from glimpse3d.core.formats import splat_to_ply_bytes

        return self.artifacts.put(splat_to_ply_bytes(self._splat), "application/x-glimpse3d-splat+ply")

    async def run_initial(self, job: Any, report: Any) -> Any:
        from glimpse3d.gateway.jobs import VersionResult

        await report("reconstruct", 1.0, "done")
        return VersionResult(splat=self._put(), metrics={"num_gaussians": len(self._splat)})

    async def run_round(self, job: Any, round_spec: Any, report: Any) -> Any:
        from glimpse3d.core.formats import read_ply
        from glimpse3d.gateway.jobs import VersionResult

        read_ply(self.artifacts.get(job.latest_version.splat))
        return VersionResult(splat=self._put(), camera=round_spec.camera or self._camera, metrics={"seconds": 0.0})

    async def preview_matte(self, image: bytes, points: Any, side: int) -> tuple[Any, Any]:
        import numpy as np

        from glimpse3d.core.matte import check_matte
        from glimpse3d.v1 import depth_pb2

        mask = np.zeros((side, side), np.float32)
        mask[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = 1.0
        check = check_matte(mask)  # as the depth service answers it (a MatteCheck message)
        return mask, depth_pb2.MatteCheck(
            coverage=check.coverage,
            border_fraction=check.border_fraction,
            fragments=check.fragments,
            warning=check.warning or "",
        )
