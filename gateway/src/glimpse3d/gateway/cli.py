"""``glimpse3d``: the command-line client of the public API.

    glimpse3d generate PHOTO [--extra PHOTO[@AZ[,EL]] ...] [--enhance N] [--views K] [--keep X,Y] [--remove X,Y]
                       [--mask FILE] --out DIR
    glimpse3d enhance JOB [--azimuth A --elevation E] [--prompt P] [--strength S]
    glimpse3d add-photo JOB PHOTO [--azimuth A [--elevation E]]
    glimpse3d restore JOB/versions/N
    glimpse3d export JOB --format ply|splat|glb [--out FILE]
    glimpse3d jobs

The gateway address comes from --addr or GLIMPSE3D_GATEWAY_ADDR; credentials from --token
(GLIMPSE3D_TOKEN, an OIDC access token) or --api-key (GLIMPSE3D_API_KEY), see docs/auth.md. A gateway serving
TLS is reached with --tls (the system's CA roots) or --ca FILE (GLIMPSE3D_GATEWAY_CA_FILE, a PEM CA bundle),
presenting --cert/--key (GLIMPSE3D_GATEWAY_CERT_FILE/GLIMPSE3D_GATEWAY_KEY_FILE) when it asks for a client
certificate; see docs/deploy.md. Errors are
one line on stderr (exit status 2 for bad input, 1 for everything else). ``generate`` prints a table of every version's
figures against the photo; when a requested round failed or was rejected it still exports the
latest version, then prints the error and exits with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import cast

import grpc
from tqdm import tqdm

from glimpse3d.core import tls
from glimpse3d.core.config import ConfigError
from glimpse3d.core.formats import formats
from glimpse3d.core.images import MAX_IMAGE_BYTES
from glimpse3d.v1 import common_pb2, glimpse3d_pb2, glimpse3d_pb2_grpc

DEFAULT_ADDR = "127.0.0.1:50060"
# name -> ExportRequest.Format (protoc's stubs type enum fields as the enum class; its values are plain ints)
FORMATS = {
    f.name: cast(glimpse3d_pb2.ExportRequest.Format, f.proto_value) for f in formats() if f.proto_enum is not None
}
# What `generate` (and `make demo`) download unless told: the splat formats. The meshes (obj, mesh-glb) are
# made by the reconstruction service in 3-15 s of CPU each: ask for them with `--formats obj mesh-glb`.
SPLAT_FORMATS = tuple(f.name for f in formats() if f.name in FORMATS and not f.export_only)
STATE = glimpse3d_pb2.Job.State


class CliError(Exception):
    """A user-facing error: printed as one line."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def read_photo(path: Path) -> bytes:
    if not path.exists():
        raise CliError(f"{path}: no such file", 2)
    if path.is_dir():
        raise CliError(f"{path}: is a directory, not an image", 2)
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise CliError(f"{path}: too large ({size} bytes; the limit is {MAX_IMAGE_BYTES})", 2)
    try:
        return path.read_bytes()
    except OSError as err:
        raise CliError(f"{path}: unreadable ({err.strerror})", 2) from None


def extra_photo(text: str) -> glimpse3d_pb2.ExtraPhoto:
    """``PATH`` or ``PATH@AZIMUTH`` or ``PATH@AZIMUTH,ELEVATION`` (degrees, the hint of where it was taken)."""
    path, _, hint = text.rpartition("@") if "@" in text else (text, "", "")
    photo = glimpse3d_pb2.ExtraPhoto(image_data=read_photo(Path(path)))
    if hint:
        try:
            angles = [float(v) for v in hint.split(",")]
        except ValueError:
            raise CliError(f"{text}: the hint after @ must be AZIMUTH or AZIMUTH,ELEVATION in degrees", 2) from None
        if len(angles) > 2:
            raise CliError(f"{text}: the hint after @ must be AZIMUTH or AZIMUTH,ELEVATION in degrees", 2)
        photo.azimuth_deg = angles[0]
        if len(angles) == 2:
            photo.elevation_deg = angles[1]
    return photo


def _job_name(job: str) -> str:
    return job if job.startswith("jobs/") else f"jobs/{job}"


def _progress_bar(quiet: bool) -> tqdm:
    """tqdm on stderr (off with --quiet); on a pipe it redraws at most every 2 s, so logs stay short."""
    interactive = sys.stderr.isatty()
    return tqdm(total=100.0, file=sys.stderr, disable=quiet, mininterval=0.1 if interactive else 2.0,
                bar_format="[{bar:30}] {percentage:5.1f}% {desc}", ascii=" #")


async def watch(stub: glimpse3d_pb2_grpc.Glimpse3DStub, name: str, *, quiet: bool = False) -> glimpse3d_pb2.Job:
    """Follow WatchJob until the job is done; draws a progress bar on stderr."""
    job = None
    with _progress_bar(quiet) as bar:
        async for event in stub.WatchJob(glimpse3d_pb2.WatchJobRequest(name=name)):
            job = event.job
            progress = job.progress
            bar.set_description_str(f"{STATE.Name(job.state):<9} {progress.message[:48]}", refresh=False)
            bar.update(100.0 * max(0.0, min(1.0, progress.fraction)) - bar.n)
            if job.done:
                break
    if job is None:
        raise CliError(f"{name}: the gateway closed the stream without an event")
    return job


def download(url: str, dest: Path) -> None:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        dest.write_bytes(Path(urllib.request.url2pathname(parsed.path)).read_bytes())
        return
    with urllib.request.urlopen(url, timeout=60) as resp:
        dest.write_bytes(resp.read())


async def export(stub: glimpse3d_pb2_grpc.Glimpse3DStub, name: str, fmt: str, dest: Path) -> Path:
    resp = await stub.Export(glimpse3d_pb2.ExportRequest(name=name, format=FORMATS[fmt]))
    download(resp.download_url, dest)
    return dest


# (metric, column title, format) of the summary table: the figures against the photo first.
SUMMARY_COLUMNS = (
    ("input_view_psnr_db", "PSNR dB", "{:.2f}"),
    ("input_view_psnr_change_db", "change", "{:+.2f}"),
    ("input_view_ssim", "SSIM", "{:.3f}"),
    ("photo_consistency_db", "consistency dB", "{:.2f}"),
    ("matte_coverage", "matte", "{:.1%}"),
    ("enhanced_view_error_after", "fit to enhanced", "{:.4f}"),
)


def summary_table(job: glimpse3d_pb2.Job) -> str:
    """Each version's figures against the photo (input view inside the matte, consistency of the
    turned views) and its fit to the view it was fed, one row per version."""
    head = ["version", "view"] + [title for _, title, _ in SUMMARY_COLUMNS]
    rows = [head]
    for v in job.versions:
        view = "photo" if not v.HasField("camera") else _view_name(v.camera)
        cells = [v.name.rsplit("/", 1)[-1], view]
        for key, _, fmt in SUMMARY_COLUMNS:
            cells.append(fmt.format(v.metrics[key]) if key in v.metrics else "-")
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def _view_name(camera: common_pb2.Camera) -> str:
    """"az A el E" of a camera's centre seen from the object centre."""
    import math

    m = list(camera.world_to_camera)
    if len(m) != 16:
        return "?"
    rot = [m[0:3], m[4:7], m[8:11]]
    t = [m[3], m[7], m[11]]
    pos = [-sum(rot[r][c] * t[r] for r in range(3)) for c in range(3)]  # -R^T t
    dist = math.sqrt(sum(x * x for x in pos)) or 1.0
    az = math.degrees(math.atan2(pos[0], pos[2])) % 360.0
    el = math.degrees(math.asin(max(-1.0, min(1.0, pos[1] / dist))))
    return f"az {round(az) % 360} el {round(el) + 0}"


def _check_done(job: glimpse3d_pb2.Job) -> None:
    if job.state in (STATE.FAILED, STATE.CANCELLED):
        detail = f": {job.error.message}" if job.error.message else ""
        raise CliError(f"{job.name} {STATE.Name(job.state).lower()}{detail}")


async def cmd_generate(stub: glimpse3d_pb2_grpc.Glimpse3DStub, ns: argparse.Namespace) -> None:
    data = read_photo(ns.photo)
    mask = read_photo(ns.mask) if ns.mask else b""
    points = [common_pb2.MattePoint(x=x, y=y, keep=True) for x, y in ns.keep]
    points += [common_pb2.MattePoint(x=x, y=y, keep=False) for x, y in ns.remove]
    options = glimpse3d_pb2.JobOptions(num_views=ns.views, enhance_rounds=ns.enhance, prompt=ns.prompt,
                                       seed=ns.seed, resolution=ns.resolution, matte_points=points)
    extras = [extra_photo(text) for text in ns.extra]
    job = await stub.CreateJob(glimpse3d_pb2.CreateJobRequest(
        image_data=data, options=options, request_id=str(uuid.uuid4()), display_name=ns.photo.name,
        mask_data=mask, extra_photos=extras))
    print(job.name)
    job = await watch(stub, job.name, quiet=ns.quiet)
    _check_done(job)
    ns.out.mkdir(parents=True, exist_ok=True)
    for fmt in ns.formats:
        path = await export(stub, job.name, fmt, ns.out / f"model.{fmt}")
        print(path)
    print(summary_table(job))
    first = job.versions[0].metrics if job.versions else {}
    if first.get("matte_implausible") == 1.0:
        print(f"warning: the matte looks wrong ({first.get('matte_coverage', float('nan')):.0%} of the photo, "
              f"{first.get('matte_border_fraction', float('nan')):.0%} of its border): check it in the workspace, "
              "or correct it (--keep X,Y / --remove X,Y, or --mask FILE)", file=sys.stderr)
    if job.error.message:  # a requested round failed or was rejected: the exports hold the last good version
        done = len(job.versions) - 1
        total = ns.enhance + len(extras)
        raise CliError(f"{job.name}: {done} of {total} rounds done; a round failed: {job.error.message}")


def _enhance_request(ns: argparse.Namespace) -> glimpse3d_pb2.EnhanceRequest:
    req = glimpse3d_pb2.EnhanceRequest(name=_job_name(ns.job), prompt=ns.prompt, strength=ns.strength,
                                       seed=ns.seed, request_id=str(uuid.uuid4()))
    if ns.azimuth is None:
        req.auto = True
    else:
        req.view.orbit.CopyFrom(common_pb2.OrbitView(azimuth_deg=ns.azimuth, elevation_deg=ns.elevation))
    return req


async def cmd_enhance(stub: glimpse3d_pb2_grpc.Glimpse3DStub, ns: argparse.Namespace) -> None:
    job = await stub.Enhance(_enhance_request(ns))
    job = await watch(stub, job.name, quiet=ns.quiet)
    _check_done(job)
    if job.error.message:
        raise CliError(f"{job.name}: the round failed: {job.error.message}")
    v = job.versions[-1]
    r = v.report
    line = (f"{v.name}: accepted {r.accepted_fraction:.1%} of pixels, fit to the enhanced view: error"
            f" {r.photometric_error_before:.4f} -> {r.photometric_error_after:.4f}")
    if "input_view_psnr_db" in v.metrics and "input_view_psnr_before_db" in v.metrics:
        # The figure a round cannot improve by construction (glimpse3d.core.feedback): PSNR against the photo.
        before, after = v.metrics["input_view_psnr_before_db"], v.metrics["input_view_psnr_db"]
        line += f"; input view against the photo {before:.2f} -> {after:.2f} dB"
        if "input_view_ssim" in v.metrics:
            line += f" (SSIM {v.metrics['input_view_ssim']:.3f})"
    print(line)


async def cmd_add_photo(stub: glimpse3d_pb2_grpc.Glimpse3DStub, ns: argparse.Namespace) -> None:
    photo = glimpse3d_pb2.ExtraPhoto(image_data=read_photo(ns.photo))
    if ns.azimuth is not None:
        photo.azimuth_deg = ns.azimuth
    if ns.elevation is not None:
        photo.elevation_deg = ns.elevation
    job = await stub.AddPhoto(glimpse3d_pb2.AddPhotoRequest(name=_job_name(ns.job), photo=photo,
                                                            request_id=str(uuid.uuid4())))
    job = await watch(stub, job.name, quiet=ns.quiet)
    _check_done(job)
    if job.error.message:
        raise CliError(f"{job.name}: the photo was not added: {job.error.message}")
    v = job.versions[-1]
    m = v.metrics
    print(f"{v.name}: posed at azimuth {m.get('pose_azimuth_deg', float('nan')):.1f}, elevation "
          f"{m.get('pose_elevation_deg', float('nan')):.1f} degrees (silhouette IoU "
          f"{m.get('pose_silhouette_iou', float('nan')):.3f}); fused as a real view")


async def cmd_restore(stub: glimpse3d_pb2_grpc.Glimpse3DStub, ns: argparse.Namespace) -> None:
    name = _job_name(ns.version)
    job = await stub.RestoreVersion(glimpse3d_pb2.RestoreVersionRequest(name=name, request_id=str(uuid.uuid4())))
    before = len(job.versions)
    number = float(name.rsplit("/", 1)[-1])
    job = await watch(stub, job.name, quiet=ns.quiet)
    _check_done(job)
    # rounds queued before this one may add versions first; a restore itself cannot fail once queued
    copies = [v for v in job.versions[before:] if v.metrics.get("restored_from") == number]
    if not copies:
        raise CliError(f"{job.name}: the version was not restored: {job.error.message or 'no copy was added'}")
    print(f"{copies[-1].name}: a copy of version {number:.0f}; later rounds go on from it")


async def cmd_export(stub: glimpse3d_pb2_grpc.Glimpse3DStub, ns: argparse.Namespace) -> None:
    name = _job_name(ns.job)
    dest = ns.out or Path(f"{name.replace('/', '_')}.{ns.format}")
    print(await export(stub, name, ns.format, dest))


async def cmd_jobs(stub: glimpse3d_pb2_grpc.Glimpse3DStub, ns: argparse.Namespace) -> None:
    token = ""
    while True:
        resp = await stub.ListJobs(glimpse3d_pb2.ListJobsRequest(page_size=100, page_token=token))
        for job in resp.jobs:
            print(f"{job.name}\t{STATE.Name(job.state)}\t{len(job.versions)} versions\t{job.display_name}")
        token = resp.next_page_token
        if not token:
            return


def _fraction_point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y (two fractions), got {text!r}") from None
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise argparse.ArgumentTypeError(f"X and Y must be fractions in [0, 1], got {text!r}")
    return x, y


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glimpse3d", description="Glimpse3D: one photo to a 3D Gaussian splat.")
    p.add_argument("--addr", default=os.environ.get("GLIMPSE3D_GATEWAY_ADDR", DEFAULT_ADDR), help="gateway host:port")
    p.add_argument("--tenant", default=os.environ.get("GLIMPSE3D_TENANT") or None,
                   help="the tenant to work in (default: the credentials' tenant, or 'default' without credentials)")
    p.add_argument("--token", default=os.environ.get("GLIMPSE3D_TOKEN") or None,
                   help="an access token (JWT) sent as 'authorization: Bearer'; env GLIMPSE3D_TOKEN")
    p.add_argument("--api-key", default=os.environ.get("GLIMPSE3D_API_KEY") or None,
                   help="a service account's API key sent as 'x-api-key'; env GLIMPSE3D_API_KEY")
    p.add_argument("--tls", action="store_true",
                   help="connect over TLS, verifying the gateway with the system's CA roots")
    p.add_argument("--ca", type=Path, default=os.environ.get("GLIMPSE3D_GATEWAY_CA_FILE") or None,
                   help="connect over TLS, verifying the gateway against this PEM CA bundle; "
                   "env GLIMPSE3D_GATEWAY_CA_FILE")
    p.add_argument("--cert", type=Path, default=os.environ.get("GLIMPSE3D_GATEWAY_CERT_FILE") or None,
                   help="with TLS, the PEM client certificate to present (mutual TLS); env GLIMPSE3D_GATEWAY_CERT_FILE")
    p.add_argument("--key", type=Path, default=os.environ.get("GLIMPSE3D_GATEWAY_KEY_FILE") or None,
                   help="the private key of --cert; env GLIMPSE3D_GATEWAY_KEY_FILE")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="photo -> splat, exported into --out")
    g.add_argument("photo", type=Path)
    g.add_argument("--enhance", type=int, default=0, help="enhancement rounds (0..10)")
    g.add_argument("--views", type=int, default=0, help="novel views to generate (0..16)")
    g.add_argument("--resolution", type=int, default=0, help="working resolution, 64..1024 (default 256)")
    g.add_argument("--prompt", default="")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--formats", nargs="+", choices=sorted(FORMATS), default=list(SPLAT_FORMATS),
                   help="formats to download (default: the splat formats; the meshes obj and mesh-glb take seconds "
                        "of CPU in the reconstruction service each)")
    g.add_argument("--keep", type=_fraction_point, action="append", default=[], metavar="X,Y",
                   help="matte correction: the object is at X,Y (fractions of the photo's width and height)")
    g.add_argument("--remove", type=_fraction_point, action="append", default=[], metavar="X,Y",
                   help="matte correction: background is at X,Y")
    g.add_argument("--mask", type=Path, help="a matte drawn for the photo (PNG, white = object); replaces the estimate")
    g.add_argument("--extra", nargs="+", default=[], metavar="PHOTO[@AZ[,EL]]",
                   help="up to 8 more photos of the object, each with an optional hint of where it was taken "
                        "(azimuth and elevation in degrees, e.g. back.jpg@180)")
    e = sub.add_parser("enhance", help="one enhancement round (auto view unless --azimuth is given)")
    e.add_argument("job")
    e.add_argument("--azimuth", type=float)
    e.add_argument("--elevation", type=float, default=0.0)
    e.add_argument("--prompt", default="")
    e.add_argument("--strength", type=float, default=0.0)
    e.add_argument("--seed", type=int, default=0)
    a = sub.add_parser("add-photo", help="add another photo of the object to a job (posed, fused as a real view)")
    a.add_argument("job")
    a.add_argument("photo", type=Path)
    a.add_argument("--azimuth", type=float, help="hint: where it was taken, degrees (0 = the first photo's side)")
    a.add_argument("--elevation", type=float, help="hint: elevation in degrees (needs --azimuth)")
    r = sub.add_parser("restore", help="go back to an earlier version: later rounds go on from a copy of it")
    r.add_argument("version", help="jobs/ID/versions/N (or ID/versions/N)")
    x = sub.add_parser("export", help="download a version in a file format")
    x.add_argument("job", help="job id, jobs/ID or jobs/ID/versions/N")
    x.add_argument("--format", required=True, choices=sorted(FORMATS))
    x.add_argument("--out", type=Path)
    sub.add_parser("jobs", help="list jobs")
    return p


COMMANDS = {"generate": cmd_generate, "enhance": cmd_enhance, "add-photo": cmd_add_photo, "restore": cmd_restore,
            "export": cmd_export, "jobs": cmd_jobs}


def channel_credentials(ns: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS credentials from --tls/--ca/--cert/--key (None: plaintext); CliError (status 2) naming a bad flag."""
    if not (ns.tls or ns.ca or ns.cert or ns.key):
        return None
    try:
        return tls.channel_credentials(ns.ca, ns.cert, ns.key, settings=("--ca", "--cert", "--key"))
    except ConfigError as err:
        raise CliError(str(err), status=2) from None


async def run(ns: argparse.Namespace) -> None:
    credentials = channel_credentials(ns)
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    channel = (grpc.aio.insecure_channel(ns.addr, options=options) if credentials is None
               else grpc.aio.secure_channel(ns.addr, credentials, options=options))
    async with channel as ch:
        stub = glimpse3d_pb2_grpc.Glimpse3DStub(ch)
        stub = cast(glimpse3d_pb2_grpc.Glimpse3DStub, _MetadataStub(stub, call_metadata(ns)))  # forwards every method
        await COMMANDS[ns.command](stub, ns)


def call_metadata(ns: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """The metadata of every call: the credentials and the tenant, each when given."""
    if ns.token and ns.api_key:
        raise CliError("give --token or --api-key, not both", status=2)
    metadata: list[tuple[str, str]] = []
    if ns.token:
        metadata.append(("authorization", f"Bearer {ns.token.strip()}"))
    if ns.api_key:
        metadata.append(("x-api-key", ns.api_key.strip()))
    if ns.tenant:
        metadata.append(("x-glimpse3d-tenant", ns.tenant))
    return tuple(metadata)


class _MetadataStub:
    """Adds the credentials and tenant metadata to every call."""

    def __init__(self, stub: glimpse3d_pb2_grpc.Glimpse3DStub, metadata: tuple[tuple[str, str], ...]) -> None:
        self._stub, self._md = stub, metadata

    def __getattr__(self, name: str):
        method = getattr(self._stub, name)
        return lambda request, **kw: method(request, metadata=self._md, **kw)


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        asyncio.run(run(ns))
    except CliError as err:
        print(f"glimpse3d: error: {err}", file=sys.stderr)
        return err.status
    except grpc.aio.AioRpcError as err:
        status = 2 if err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND) else 1
        print(f"glimpse3d: error: {err.details()} ({err.code().name})", file=sys.stderr)
        return status
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
