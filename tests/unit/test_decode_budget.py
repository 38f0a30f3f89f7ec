"""The per-process decode budget (glimpse3d.core.decodegate) and decode_image's use of it."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image, ImageFile

from glimpse3d.core import decodegate
from glimpse3d.core.config import ConfigError, load_config
from glimpse3d.core.decodegate import DecodeConfig, DecodeGate, process_gate, set_process_gate
from glimpse3d.core.errors import InvalidInput, Overloaded
from glimpse3d.core.images import decode_image, encode_png


class FakeClock:
    """A clock that advances only when told to, or by ``step`` each time it is read."""

    def __init__(self, step: float = 0.0) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def png(width: int, height: int) -> bytes:
    return encode_png(np.zeros((height, width, 3), np.uint8))


def bomb(side: int = 8192) -> bytes:
    """A few-KB 1-bit PNG that declares side x side pixels."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


# ---- the arithmetic --------------------------------------------------------------------------------


def test_reservations_add_up_to_the_budget_and_release_gives_back() -> None:
    gate = DecodeGate(max_pixels=100, max_concurrent=4, wait_s=0.0)
    gate.acquire(60)
    gate.acquire(40)  # exactly full
    assert (gate.pixels_in_use, gate.decodes_in_flight) == (100, 2)
    with pytest.raises(Overloaded) as info:
        gate.acquire(1, field="image_data")
    assert info.value.field == "image_data"
    assert info.value.metadata["quota"] == "decode_max_pixels"
    assert "2 images of 100 pixels" in info.value.message
    gate.release(60)
    gate.acquire(60)  # room again
    assert gate.pixels_in_use == 100
    assert gate.refused == 1


def test_concurrency_limit_applies_whatever_the_size() -> None:
    gate = DecodeGate(max_pixels=1000, max_concurrent=2, wait_s=0.0)
    gate.acquire(1)
    gate.acquire(1)
    with pytest.raises(Overloaded):
        gate.acquire(1)
    gate.release(1)
    gate.acquire(1)


def test_larger_than_the_whole_budget_is_invalid_input_at_once() -> None:
    clock = FakeClock()
    gate = DecodeGate(max_pixels=100, max_concurrent=4, wait_s=30.0, clock=clock)
    with pytest.raises(InvalidInput, match="decodes at most 100 pixels") as info:
        gate.acquire(101, field="image")
    assert not isinstance(info.value, Overloaded)
    assert clock.now == 0.0  # no waiting for something that can never fit
    assert gate.pixels_in_use == 0


def test_waits_for_room_up_to_wait_s() -> None:
    clock = FakeClock(step=0.5)  # every read of the clock is half a second later
    gate = DecodeGate(max_pixels=10, max_concurrent=4, wait_s=2.0, clock=clock)
    gate.acquire(10)
    with pytest.raises(Overloaded):
        gate.acquire(5)
    assert 2.0 <= clock.now <= 3.5  # gave up after its 2 s, not at once and not much later


def test_a_waiter_gets_in_when_a_decode_ends() -> None:
    gate = DecodeGate(max_pixels=10, max_concurrent=4, wait_s=10.0)
    gate.acquire(10)
    got_in = threading.Event()

    def wait_for_room() -> None:
        gate.acquire(7)
        got_in.set()

    waiter = threading.Thread(target=wait_for_room)
    waiter.start()
    assert not got_in.wait(0.1)
    gate.release(10)
    assert got_in.wait(5.0)
    waiter.join()
    assert gate.pixels_in_use == 7


def test_settings_are_checked_and_read_from_the_environment() -> None:
    config = load_config(DecodeConfig, {"GLIMPSE3D_DECODE_MAX_PIXELS": "1000", "GLIMPSE3D_DECODE_WAIT_S": "0.5"})
    gate = DecodeGate.from_config(config)
    assert (gate.max_pixels, gate.wait_s, gate.max_concurrent) == (1000, 0.5, 4)
    assert DecodeConfig().decode_max_pixels == 2 * 8192 * 8192
    with pytest.raises(ConfigError, match=r"decode_max_concurrent must be in 1\.\.1024"):
        load_config(DecodeConfig, {"GLIMPSE3D_DECODE_MAX_CONCURRENT": "0"})
    with pytest.raises(ConfigError, match="decode_wait_s"):
        DecodeGate(wait_s=-1.0)


def test_process_gate_is_built_once_and_replaceable() -> None:
    mine = DecodeGate(max_pixels=5)
    old = set_process_gate(mine)
    try:
        assert process_gate() is mine
    finally:
        set_process_gate(old)


# ---- decode_image goes through the gate ---------------------------------------------------------


def test_too_big_image_is_refused_before_any_pixel_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[object] = []
    original = ImageFile.ImageFile.load

    def counting_load(self: ImageFile.ImageFile) -> object:
        loads.append(self)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    full = DecodeGate(max_pixels=8192 * 8192, max_concurrent=4, wait_s=0.0)
    full.acquire(1)  # someone else is decoding: not room for a full-size image
    with pytest.raises(Overloaded) as info:
        decode_image(bomb(), field="image_data", gate=full)
    assert info.value.field == "image_data"
    assert "requested" in info.value.metadata and info.value.metadata["requested"] == str(8192 * 8192)
    tiny = DecodeGate(max_pixels=100, max_concurrent=4, wait_s=0.0)
    with pytest.raises(InvalidInput, match="decodes at most 100 pixels"):
        decode_image(png(11, 10), gate=tiny)  # 110 pixels > 100
    assert loads == []  # the header was enough to refuse both
    assert decode_image(png(10, 10), gate=tiny).shape == (10, 10, 3)  # exactly the budget: decoded
    assert loads  # and here the pixels were loaded (Pillow calls load() again when converting)
    assert tiny.pixels_in_use == 0


def test_reservation_is_held_during_the_decode_and_released_after() -> None:
    seen: list[int] = []

    class Spy(DecodeGate):
        def release(self, pixels: int) -> None:
            seen.append(self.pixels_in_use)
            super().release(pixels)

    gate = Spy(max_pixels=10_000, max_concurrent=4, wait_s=0.0)
    assert decode_image(png(40, 30), gate=gate).shape == (30, 40, 3)
    assert seen == [1200]
    assert gate.pixels_in_use == 0 and gate.decodes_in_flight == 0


def test_released_when_the_decode_fails() -> None:
    gate = DecodeGate(max_pixels=10_000, max_concurrent=1, wait_s=0.0)
    data = bytearray(png(64, 64))
    idat = data.index(b"IDAT")
    data[idat + 8 : idat + 40] = bytes(32)  # corrupt the compressed pixels, keep header and IEND
    with pytest.raises(InvalidInput, match="truncated or corrupt"):
        decode_image(bytes(data), gate=gate)
    assert gate.pixels_in_use == 0 and gate.decodes_in_flight == 0
    assert decode_image(png(64, 64), gate=gate).shape == (64, 64, 3)  # the single slot is free again


def test_header_errors_take_no_reservation() -> None:
    gate = DecodeGate(max_pixels=10, max_concurrent=1, wait_s=0.0)
    with pytest.raises(InvalidInput, match="limit is 8192 a side"):
        decode_image(png(8193, 1), gate=gate)
    assert gate.decodes_in_flight == 0


def test_memory_is_trimmed_after_a_large_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(decodegate, "_malloc_trim", lambda pad: calls.append(pad) or 1)
    gate = DecodeGate(max_pixels=10_000, max_concurrent=1, wait_s=0.0, trim_pixels=1000)
    decode_image(png(10, 10), gate=gate)  # 100 pixels: below the threshold
    assert calls == [] and gate.trims == 0
    decode_image(png(50, 40), gate=gate)  # 2000 pixels
    assert calls == [0] and gate.trims == 1
    monkeypatch.setattr(decodegate, "_malloc_trim", None)  # a C library without malloc_trim
    decode_image(png(50, 40), gate=gate)
    assert gate.trims == 1


def test_webp_uploads_are_converted_inside_the_process_gate() -> None:
    from glimpse3d.gateway.http.uploads import webp_to_png

    def webp(width: int, height: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (width, height), (200, 30, 30)).save(buf, "WEBP", lossless=True)
        return buf.getvalue()

    gate = DecodeGate(max_pixels=100, max_concurrent=1, wait_s=0.0)
    old = set_process_gate(gate)
    try:
        with pytest.raises(InvalidInput, match="decodes at most 100 pixels") as info:
            webp_to_png(webp(11, 10))
        assert info.value.field == "photo"
        gate.acquire(1)  # another decode holds the only slot
        with pytest.raises(Overloaded):
            webp_to_png(webp(10, 10))
        gate.release(1)
        assert decode_image(webp_to_png(webp(10, 10))).shape == (10, 10, 3)
        assert gate.pixels_in_use == 0 and gate.decodes_in_flight == 0
    finally:
        set_process_gate(old)
