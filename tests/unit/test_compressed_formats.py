"""The compressed export formats: Niantic ``.spz`` and PlayCanvas SOG (``.sog``).

Round trips within the tolerances docs/formats.md states, the byte layout where it is fixed (spz's
header, fixed-point positions, version-2 rotations), malformed input, the render PSNR of what each
format reads back, and an independent reader: PlayCanvas splat-transform (web/node_modules, installed
by ``make web``) converting our files back to ``.ply``, which our ``.ply`` reader then compares.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import re
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from glimpse3d.core.errors import FailedPrecondition, InvalidInput
from glimpse3d.core.formats import get_format, read_ply, read_sog, read_spz, splat_to_sog_bytes, splat_to_spz_bytes
from glimpse3d.core.formats.sog import _morton_order
from glimpse3d.core.formats.spz import HEADER, MAGIC
from glimpse3d.core.splat import Splat

REPO_ROOT = Path(__file__).resolve().parents[2]
SPLAT_TRANSFORM = REPO_ROOT / "web" / "node_modules" / ".bin" / "splat-transform"


def random_splat(n: int, degree: int, seed: int = 0, sh_scale: float = 0.3) -> Splat:
    rng = np.random.default_rng(seed)
    sh = rng.uniform(-1.0, 1.0, (n, (degree + 1) ** 2, 3)) * sh_scale
    sh[:, 0] = rng.uniform(-1.5, 1.5, (n, 3))  # base colour roughly in [0.08, 0.92]
    return Splat(
        means=rng.uniform(-1.5, 1.5, (n, 3)).astype(np.float32),
        quats=rng.normal(size=(n, 4)).astype(np.float32),
        log_scales=rng.uniform(-7.0, 0.5, (n, 3)).astype(np.float32),
        opacity_logits=rng.uniform(-4.0, 4.0, n).astype(np.float32),
        sh=sh.astype(np.float32),
    )


def quat_error(a: Splat, b: Splat) -> float:
    """Largest 1 - |<q_a, q_b>| over the Gaussians (q and -q are the same rotation)."""
    return float((1.0 - np.abs((a.unit_quats.astype(np.float64) * b.unit_quats).sum(axis=1))).max())


# ---- .spz --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_spz_round_trip_tolerances(degree: int) -> None:
    splat = random_splat(500, degree, seed=degree)
    back = read_spz(splat_to_spz_bytes(splat))
    assert back.num_gaussians == 500 and back.sh_degree == degree
    assert np.abs(back.means - splat.means).max() <= 0.5 / 4096 + 1e-6  # 12 fractional bits
    assert np.abs(back.log_scales - splat.log_scales).max() <= 0.5 / 16 + 1e-5  # 1/16 steps
    assert np.abs(back.opacities - splat.opacities).max() <= 0.5 / 255 + 1e-5
    assert np.abs(back.sh[:, 0] - splat.sh[:, 0]).max() <= 0.5 / (0.15 * 255) + 1e-5
    assert quat_error(back, splat) <= 5e-5  # 9 bits a component: a few thousandths of a radian
    if degree:
        assert np.abs(back.sh[:, 1:4] - splat.sh[:, 1:4]).max() <= 4.5 / 128 + 1e-6  # 5 bits
        assert np.abs(back.sh[:, 4:] - splat.sh[:, 4:]).max() <= 8.5 / 128 + 1e-6 if degree > 1 else True


def test_spz_layout_and_coordinates_unchanged() -> None:
    """Version 3, 12 fractional bits, and positions stored as they are (Glimpse3D's world is spz's
    Right-Up-Back): the first Gaussian's x, y, z are round(v * 4096) in 24-bit two's complement."""
    splat = Splat.from_colors(np.array([[0.25, -1.0, 2.0]]), [[0.5, 0.5, 0.5]], 0.1, 0.5)
    raw = gzip.decompress(splat_to_spz_bytes(splat))
    assert HEADER.unpack_from(raw) == (MAGIC, 3, 1, 0, 12, 0, 0)
    fixed = [int.from_bytes(raw[16 + 3 * i : 19 + 3 * i], "little", signed=True) for i in range(3)]
    assert fixed == [1024, -4096, 8192]
    assert len(raw) == 16 + 9 + 1 + 3 + 3 + 4


def test_spz_reads_version_2() -> None:
    """Version 2 stores (x, y, z) of the quaternion with w >= 0 in 3 bytes of (v + 1) * 127.5."""
    q = np.array([0.8, 0.2, -0.4, np.sqrt(1 - 0.64 - 0.04 - 0.16)])  # (w, x, y, z), unit
    rot = bytes(round((v + 1.0) * 127.5) for v in q[1:])
    pos = (2048).to_bytes(3, "little") + (-2048).to_bytes(3, "little", signed=True) + (0).to_bytes(3, "little")
    body = HEADER.pack(MAGIC, 2, 1, 0, 12, 0, 0) + pos + bytes([200]) + bytes([128, 128, 128]) + bytes([96] * 3) + rot
    back = read_spz(gzip.compress(body))
    assert np.allclose(back.means, [[0.5, -0.5, 0.0]])
    assert np.allclose(back.unit_quats[0], q, atol=1e-2)
    assert np.allclose(back.log_scales, 96 / 16 - 10)
    assert np.allclose(back.opacities, 200 / 255, atol=1e-6)


def test_spz_fractional_bits_shrink_for_large_scenes() -> None:
    splat = Splat.from_colors(np.array([[5000.0, 0.0, -3000.5]]), [[0.5, 0.5, 0.5]], 0.1, 0.5)
    data = splat_to_spz_bytes(splat)
    assert gzip.decompress(data)[13] == 10  # 5000 * 2^10 < 2^23 <= 5000 * 2^11
    assert np.allclose(read_spz(data).means, splat.means, atol=2**-11)
    with pytest.raises(FailedPrecondition):
        splat_to_spz_bytes(Splat.from_colors(np.array([[1e7, 0.0, 0.0]]), [[0.5, 0.5, 0.5]], 0.1, 0.5))


def _spz(version: int = 3, n: int = 1, degree: int = 0, bits: int = 12, flags: int = 0, extra: bytes = b"") -> bytes:
    rot = 4 if version >= 3 else 3
    body = HEADER.pack(MAGIC, version, n, degree, bits, flags, 0) + bytes(n * (9 + 1 + 3 + 3)) + b"\x00\x00\x00\xc0" * (
        n if rot == 4 else 0) + bytes(n * 3 * ({0: 0, 1: 3, 2: 8, 3: 15}.get(degree, 24)))
    return gzip.compress(body + extra)


def test_spz_minimal_file_is_valid() -> None:
    assert read_spz(_spz()).num_gaussians == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no gzip"),
        (b"plain bytes", "no gzip"),
        (struct.pack("<II", MAGIC, 4) + bytes(24), "version 4 (zstd"),
        (_spz()[:-12], "truncated"),
        (gzip.compress(b"NGSP"), "header is truncated"),
        (gzip.compress(struct.pack("<IIIBBBB", 0x12345678, 3, 1, 0, 12, 0, 0)), "magic"),
        (_spz(version=1), "version 1"),
        (_spz(version=5), "version 5"),
        (_spz(degree=4), "SH degree 4"),
        (_spz(bits=30), "fractionalBits"),
        (_spz(extra=b"junk"), "inflates to more than the 36 bytes"),
        (gzip.compress(gzip.decompress(_spz())[:-2]), "truncated"),
        (gzip.compress(struct.pack("<IIIBBBB", MAGIC, 3, 2**31, 0, 12, 0, 0)), "more than the limit"),
    ],
)
def test_spz_malformed(data: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)) as info:
        read_spz(data)
    assert info.value.field == "spz"


def test_spz_extensions_are_skipped_and_bombs_refused() -> None:
    assert read_spz(_spz(flags=2, extra=b"\x01" * 100)).num_gaussians == 1
    bomb = gzip.compress(gzip.decompress(_spz()) + bytes(50_000_000))  # 50 MB of zeros in ~50 KB
    with pytest.raises(InvalidInput, match=r"past its 1 Gaussians|inflates to more"):
        read_spz(bomb)
    with pytest.raises(InvalidInput, match="more than the limit"):
        read_spz(splat_to_spz_bytes(random_splat(5, 0)), max_gaussians=4)


def test_spz_reads_paths_and_streams(tmp_path: Path) -> None:
    data = splat_to_spz_bytes(random_splat(20, 1))
    (tmp_path / "a.spz").write_bytes(data)
    assert read_spz(tmp_path / "a.spz").allclose(read_spz(data))
    assert read_spz(io.BytesIO(data)).allclose(read_spz(data))


# ---- .sog --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_sog_round_trip_tolerances(degree: int) -> None:
    """With at most 1024 Gaussians the SH palette holds every Gaussian's own bands, so only the
    256-entry codebooks and the 8- and 16-bit texels lose precision."""
    splat = random_splat(400, degree, seed=10 + degree)
    back = read_sog(splat_to_sog_bytes(splat))
    ordered = splat.subset(_morton_order(splat.means))  # SOG stores Gaussians in Morton order
    assert back.num_gaussians == 400 and back.sh_degree == degree
    # 16 bits over log(1 + |x|): a step of (range / 65535) in the log domain
    assert np.abs(back.means - ordered.means).max() <= 2.5 * math.log1p(1.5) * 2 / 65535 * 1.5 + 1e-6
    assert np.abs(back.log_scales - ordered.log_scales).max() <= 0.05  # 256-entry codebook over a 7.5 range
    assert np.abs(back.sh[:, 0] - ordered.sh[:, 0]).max() <= 0.025  # the same over a 3.0 range
    assert np.abs(back.opacities - ordered.opacities).max() <= 0.5 / 255 + 1e-5
    assert quat_error(back, ordered) <= 5e-4  # 8 bits a component
    if degree:
        assert np.abs(back.sh[:, 1:] - ordered.sh[:, 1:]).max() <= 0.025


def test_sog_bundle_layout() -> None:
    data = splat_to_sog_bytes(random_splat(50, 3))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        meta = json.loads(zf.read("meta.json"))
        names = set(zf.namelist())
    assert meta["version"] == 2 and meta["count"] == 50 and meta["shN"]["bands"] == 3
    assert names == {"meta.json", "means_l.webp", "means_u.webp", "quats.webp", "scales.webp", "sh0.webp",
                     "shN_centroids.webp", "shN_labels.webp"}
    assert len(meta["scales"]["codebook"]) == len(meta["sh0"]["codebook"]) == 256


def test_sog_large_palette_is_lossy_but_close() -> None:
    splat = random_splat(3000, 2, seed=5, sh_scale=0.05)
    back = read_sog(splat_to_sog_bytes(splat))
    ordered = splat.subset(_morton_order(splat.means))
    err = np.abs(back.sh[:, 1:] - ordered.sh[:, 1:])
    assert err.mean() < 0.03 and err.max() < 0.15


def _rezip(data: bytes, **changes: bytes | None) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    for key, value in changes.items():
        name = key.replace("_dot_", ".")
        if value is None:
            members.pop(name)
        else:
            members[name] = value
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, value in members.items():
            zf.writestr(name, value)
    return out.getvalue()


SOG = splat_to_sog_bytes(random_splat(30, 1))
SOG_META = json.loads(zipfile.ZipFile(io.BytesIO(SOG)).read("meta.json"))


def _meta(**changes: object) -> bytes:
    meta = json.loads(json.dumps(SOG_META))
    meta.update(changes)
    return json.dumps(meta).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a zip", "not a readable .sog"),
        (SOG[: len(SOG) // 2], "not a readable .sog"),
        (_rezip(SOG, meta_dot_json=None), "no 'meta.json'"),
        (_rezip(SOG, meta_dot_json=b"{"), "not valid UTF-8 JSON"),
        (_rezip(SOG, meta_dot_json=_meta(version=1)), "version 1"),
        (_rezip(SOG, meta_dot_json=_meta(count=10**9)), "count must be"),
        (_rezip(SOG, meta_dot_json=_meta(count=33)), "fewer than"),
        (_rezip(SOG, meta_dot_json=_meta(means={**SOG_META["means"], "mins": [0, 0, float("inf")]})), "non-finite"),
        (_rezip(SOG, meta_dot_json=_meta(means={**SOG_META["means"], "maxs": [800, 0, 0]})), "beyond float32"),
        (_rezip(SOG, meta_dot_json=_meta(scales={**SOG_META["scales"], "codebook": [1.0] * 255})), "256 numbers"),
        (_rezip(SOG, meta_dot_json=_meta(shN={**SOG_META["shN"], "count": 3})), "past the palette"),
        (_rezip(SOG, meta_dot_json=_meta(shN={**SOG_META["shN"], "bands": 2})), "fewer than the 512"),
        (_rezip(SOG, quats_dot_webp=b"RIFF0000WEBPjunk"), "not a readable WebP"),
        (_rezip(SOG, means_l_dot_webp=None), "no 'means_l.webp'"),
    ],
)
def test_sog_malformed(data: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)) as info:
        read_sog(data)
    assert info.value.field == "sog"


def test_sog_bad_quaternion_tag() -> None:
    from PIL import Image

    with zipfile.ZipFile(io.BytesIO(SOG)) as zf:
        texels = np.asarray(Image.open(io.BytesIO(zf.read("quats.webp"))).convert("RGBA")).copy()
    texels[0, 0, 3] = 17
    out = io.BytesIO()
    Image.fromarray(texels, "RGBA").save(out, "WEBP", lossless=True, exact=True)
    with pytest.raises(InvalidInput, match="tag 17"):
        read_sog(_rezip(SOG, quats_dot_webp=out.getvalue()))


def test_sog_empty_splat_is_refused() -> None:
    with pytest.raises(FailedPrecondition):
        splat_to_sog_bytes(random_splat(0, 0))


# ---- both: registry, render quality, an independent reader --------------------------------------------


def test_registry_entries() -> None:
    spz, sog = get_format("spz"), get_format("sog")
    assert (spz.extension, spz.media_type, spz.proto_enum, spz.proto_value) == (".spz", "application/x-spz", "SPZ", 4)
    assert (sog.extension, sog.media_type, sog.proto_enum, sog.proto_value) == (".sog", "application/x-sog", "SOG", 5)


def test_render_psnr_of_decoded_splats() -> None:
    """What docs/formats.md reports (bench/bench_formats.py), on one view: the decoded splat renders
    more than 35 dB from the original (the .splat export, which drops SH bands 1..3, gets ~35)."""
    from bench.bench_formats import harness_splat, psnr
    from glimpse3d.core.cameras import orbit_camera
    from glimpse3d.core.synthetic import DEFAULT_DISTANCE, DEFAULT_FOV_Y_DEG, render_image

    splat = harness_splat()
    cams = [orbit_camera(az, 10.0, DEFAULT_DISTANCE, width=128, height=128, fov_y_deg=DEFAULT_FOV_Y_DEG)
            for az in (150.0,)]
    refs = [render_image(splat, cam) for cam in cams]
    for writer, reader in ((splat_to_spz_bytes, read_spz), (splat_to_sog_bytes, read_sog)):
        back = reader(writer(splat))
        scores = [psnr(render_image(back, cam), ref) for cam, ref in zip(cams, refs, strict=True)]
        assert min(scores) > 35.0, (writer.__name__, scores)


def _x180(splat: Splat) -> Splat:
    """``splat`` rotated 180 degrees about x, the Right-Up-Back <-> Right-Down-Front change that
    splat-transform applies between .spz and .ply: y and z negate, and so do the quaternion's y and z
    and every SH basis function odd in (y, z)."""
    signs = np.array([1, -1, -1, 1, -1, 1, 1, -1, 1, -1, 1, -1, -1, 1, -1, 1], np.float32)
    k = splat.sh.shape[1]
    return Splat(splat.means * np.array([1, -1, -1], np.float32), splat.quats * np.array([1, 1, -1, -1], np.float32),
                 splat.log_scales, splat.opacity_logits, splat.sh * signs[:k, None])


def _splat_transform(src: Path, dest: Path) -> None:
    if not SPLAT_TRANSFORM.exists() or shutil.which("node") is None:
        pytest.skip("PlayCanvas splat-transform is not installed (make web runs npm ci in web/)")
    run = subprocess.run([str(SPLAT_TRANSFORM), "-w", str(src), str(dest)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr


def _assert_same(ours: Splat, theirs: Splat) -> None:
    assert theirs.num_gaussians == ours.num_gaussians and theirs.sh_degree == ours.sh_degree
    assert np.allclose(theirs.means, ours.means, atol=1e-5)
    assert np.allclose(theirs.log_scales, ours.log_scales, atol=1e-5)
    assert np.allclose(theirs.opacity_logits, ours.opacity_logits, atol=1e-3)
    assert np.allclose(theirs.sh, ours.sh, atol=1e-5)
    assert quat_error(theirs, ours) <= 1e-5


@pytest.mark.parametrize("degree", [0, 3])
def test_splat_transform_reads_our_spz(tmp_path: Path, degree: int) -> None:
    data = splat_to_spz_bytes(random_splat(300, degree, seed=20 + degree))
    (tmp_path / "a.spz").write_bytes(data)
    _splat_transform(tmp_path / "a.spz", tmp_path / "a.ply")
    _assert_same(_x180(read_spz(data)), read_ply(tmp_path / "a.ply"))


@pytest.mark.parametrize("degree", [0, 3])
def test_splat_transform_reads_our_sog(tmp_path: Path, degree: int) -> None:
    data = splat_to_sog_bytes(random_splat(300, degree, seed=30 + degree))
    (tmp_path / "a.sog").write_bytes(data)
    _splat_transform(tmp_path / "a.sog", tmp_path / "a.ply")
    _assert_same(read_sog(data), read_ply(tmp_path / "a.ply"))
