"""The ``glimpse3d`` CLI against a scripted gateway stub: what ``generate`` prints and its exit status
when a requested round failed or was rejected (the model must still be exported)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

from glimpse3d.gateway import cli
from glimpse3d.v1 import glimpse3d_pb2 as pb

SAMPLE = Path(__file__).resolve().parents[2] / "assets" / "sample.png"


class ScriptedStub:
    """CreateJob / WatchJob / Export of one job whose final state is given."""

    def __init__(self, final: pb.Job, tmp_path: Path) -> None:
        self.final, self.tmp = final, tmp_path
        self.exports: list[int] = []

    async def CreateJob(self, request):
        return pb.Job(name=self.final.name, state=pb.Job.QUEUED)

    def WatchJob(self, request):
        final = self.final

        async def events():
            yield pb.JobEvent(job=final)

        return events()

    async def Export(self, request):
        self.exports.append(request.format)
        path = self.tmp / f"export-{len(self.exports)}"
        path.write_bytes(b"splat bytes")
        return pb.ExportResponse(download_url=path.as_uri())


def _job(error: str = "") -> pb.Job:
    job = pb.Job(name="jobs/abc", state=pb.Job.SUCCEEDED, done=True)
    v1 = job.versions.add(name="jobs/abc/versions/1")
    v1.metrics.update({"input_view_psnr_db": 31.25, "input_view_ssim": 0.912, "matte_coverage": 0.31})
    v2 = job.versions.add(name="jobs/abc/versions/2")
    v2.camera.world_to_camera.extend([0, 0, -1, 0, 0, 1, 0, 0, 1, 0, 0, -2.7, 0, 0, 0, 1])  # on +x: azimuth 90
    v2.metrics.update({"input_view_psnr_db": 31.5, "input_view_psnr_change_db": 0.25,
                       "enhanced_view_error_after": 0.01})
    if error:
        job.error.code, job.error.message = 9, error
    return job


def _ns(tmp_path: Path, enhance: int) -> argparse.Namespace:
    return cli.build_parser().parse_args(["--quiet", "generate", str(SAMPLE), "--enhance", str(enhance),
                                          "--formats", "ply", "splat", "--out", str(tmp_path / "out")])


def test_generate_prints_a_summary_table_and_exits_0(tmp_path, capsys):
    stub = ScriptedStub(_job(), tmp_path)
    asyncio.run(cli.cmd_generate(stub, _ns(tmp_path, 1)))
    out = capsys.readouterr().out
    assert (tmp_path / "out" / "model.ply").read_bytes() == b"splat bytes" and len(stub.exports) == 2
    table = out.splitlines()[-3:]
    assert table[0].split()[:4] == ["version", "view", "PSNR", "dB"]
    assert table[1].split()[:5] == ["1", "photo", "31.25", "-", "0.912"] and "31.0%" in table[1]
    assert table[2].split()[:6] == ["2", "az", "90", "el", "0", "31.50"] and "+0.25" in table[2]


def test_generate_exits_1_with_the_error_when_a_round_failed_and_still_exports(tmp_path, capsys):
    reason = "the round would lower the input-view PSNR against the photo from 31.50 to 30.10 dB"
    stub = ScriptedStub(_job(reason), tmp_path)
    with pytest.raises(cli.CliError) as err:
        asyncio.run(cli.cmd_generate(stub, _ns(tmp_path, 2)))
    assert err.value.status == 1
    assert "1 of 2 rounds done" in str(err.value) and reason in str(err.value)
    assert (tmp_path / "out" / "model.ply").exists() and (tmp_path / "out" / "model.splat").exists()
    assert "PSNR dB" in capsys.readouterr().out  # the table of the versions that exist


def test_generate_warns_about_an_implausible_matte(tmp_path, capsys):
    job = _job()
    job.versions[0].metrics.update({"matte_implausible": 1.0, "matte_border_fraction": 0.62})
    asyncio.run(cli.cmd_generate(ScriptedStub(job, tmp_path), _ns(tmp_path, 1)))
    err = capsys.readouterr().err
    assert "the matte looks wrong (31% of the photo, 62% of its border)" in err
