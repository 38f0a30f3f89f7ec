"""Cooperative cancellation of blocking work that runs in worker threads.

A service runs each call's compute in a thread (:class:`glimpse3d.core.service.ComputeLimiter`).
Threads cannot be killed, so long loops (fitting, fusion, diffusion steps) call
:func:`check_cancelled` every iteration; when the gRPC call was cancelled (the client went away, or
the gateway cancelled the job) it raises :class:`~glimpse3d.core.errors.Cancelled` and the work
stops. Outside a service call it does nothing, so library code can call it unconditionally.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator

from glimpse3d.core.errors import Cancelled

_cancel_event: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "glimpse3d_cancel", default=None
)


def check_cancelled() -> None:
    """Raise :class:`Cancelled` if the call this work belongs to was cancelled."""
    event = _cancel_event.get()
    if event is not None and event.is_set():
        raise Cancelled("the call was cancelled")


@contextlib.contextmanager
def cancel_scope() -> Iterator[threading.Event]:
    """Bind a fresh event to the current context; work started inside (including threads started
    with ``asyncio.to_thread``, which copy the context) sees it through :func:`check_cancelled`."""
    event = threading.Event()
    token = _cancel_event.set(event)
    try:
        yield event
    finally:
        _cancel_event.reset(token)
