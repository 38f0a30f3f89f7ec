"""The load benchmark (bench/bench_load.py) in small: locust users hammer the cheap calls while jobs run,
and nothing is lost: every job ends SUCCEEDED with all its versions, every call is answered OK, and the
counts match what was submitted. The latencies themselves are reported by ``make bench``, not asserted.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))  # the bench package

from bench.bench_load import CALLS, SERVICE_ENV, measure  # noqa: E402
from glimpse3d.gateway.stack import start_stack  # noqa: E402
from glimpse3d.v1 import glimpse3d_pb2 as pb  # noqa: E402

JOBS, ROUNDS, USERS = 4, 1, 4


def test_nothing_is_lost_under_load(tmp_path: Path) -> None:
    with start_stack(tmp_path / "stack", service_env=SERVICE_ENV, http_port=-1, timeout_s=180.0) as stack:
        idle, loaded = measure(stack.gateway_addr, tmp_path, users=USERS, jobs=JOBS, rounds=ROUNDS, idle_s=2.0,
                               timeout_s=300.0)
    assert loaded.lost() == []
    assert loaded.submitted == len(loaded.jobs) == JOBS
    assert len({job.name for job in loaded.jobs}) == JOBS
    assert all(job.state == pb.Job.SUCCEEDED for job in loaded.jobs)
    for phase in (idle, loaded):
        assert set(phase.calls) == set(CALLS)
        for call, stats in phase.calls.items():
            assert stats.count > 0 and stats.failures == 0, (call, stats)
            assert 0 <= stats.p50 <= stats.p99, (call, stats)
