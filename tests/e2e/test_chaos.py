"""Jobs survive every process of the stack being stopped under them (tests/e2e/chaos.py).

Ten jobs of two automatic rounds each, at the smallest working resolution; meanwhile each of the five
services and then the gateway is stopped once while it works (a call in flight; the gateway: a job
running) and started again on the same port five seconds later: by SIGKILL (crashes, OOM kills), then
by SIGTERM (a rolling restart: each process drains first). Nothing may be lost: all ten jobs succeed
with every round done (a version, or a rejection by the photo check), and the restarted gateway
resumes the jobs the old one held, queued rounds included.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from chaos import GATEWAY_ENV, SERVICE_ENV, TARGETS, retries_logged, run

from glimpse3d.gateway.stack import REQUIRED_SERVICES, Stack, start_stack

JOBS, ROUNDS = 10, 2
TIMEOUT_S = 600.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("chaos")
    with start_stack(state, env=GATEWAY_ENV, timeout_s=180.0, service_env=SERVICE_ENV, http_port=-1) as running:
        yield running


def resumed_logged(stack: Stack) -> int:
    lines = (stack.state_dir / "gateway.log").read_text(errors="replace").splitlines()
    return sum(1 for line in lines if '"msg": "resuming job"' in line)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_jobs_survive_every_process_stopped_mid_stage(stack: Stack, sig: signal.Signals) -> None:
    resumed_before = resumed_logged(stack)
    retried_before = retries_logged(stack)
    outcome = run(stack, GATEWAY_ENV, jobs=JOBS, rounds=ROUNDS, sig=sig, timeout_s=TIMEOUT_S)
    print(outcome.summary())
    assert outcome.problems == [], outcome.summary()
    assert len(outcome.jobs) == JOBS
    assert [s.target for s in outcome.stops][-1] == "gateway"
    assert sorted(s.target for s in outcome.stops) == sorted(TARGETS)
    assert all(s.mid_call for s in outcome.stops), outcome.summary()  # each stop landed while it worked
    assert resumed_logged(stack) > resumed_before  # the restarted gateway picked up the jobs in flight
    if sig == signal.SIGKILL:  # every killed service cut a call, which the gateway retried
        retried = {s: outcome.retried[s] - retried_before[s] for s in REQUIRED_SERVICES}
        assert all(n > 0 for n in retried.values()), retried
