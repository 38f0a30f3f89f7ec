"""The job state machine.

::

    QUEUED ──► RUNNING ──► SUCCEEDED ──► RUNNING (an enhancement round) ──► SUCCEEDED ...
      │           │ ╲
      │           │  ╲──► FAILED      (the initial reconstruction failed)
      ▼           ▼
    CANCELLED ◄───┘                   (cancelled before the job had a version)

A job is *done* when no work is running: SUCCEEDED, FAILED or CANCELLED. SUCCEEDED is not final:
``Enhance`` takes it back to RUNNING for one more round. A round that fails or is cancelled
returns the job to SUCCEEDED (its versions stay valid) with ``error`` describing what happened;
only a job without any version becomes FAILED or CANCELLED, and those two states are final.

Every state write in :mod:`glimpse3d.gateway.store` goes through :func:`check_transition`.
"""

from __future__ import annotations

from enum import StrEnum

from glimpse3d.core.errors import FailedPrecondition


class JobState(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def done(self) -> bool:
        """True when no work is running (SUCCEEDED, FAILED or CANCELLED)."""
        return self in DONE_STATES

    @property
    def final(self) -> bool:
        """True for the states a job never leaves (FAILED, CANCELLED)."""
        return self in FINAL_STATES


DONE_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
FINAL_STATES = frozenset({JobState.FAILED, JobState.CANCELLED})
ACTIVE_STATES = frozenset({JobState.QUEUED, JobState.RUNNING})

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset({JobState.RUNNING}),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class Stage(StrEnum):
    """Machine-readable stage names reported in ``Progress.stage``."""

    MATTING_DEPTH = "matting_depth"
    RECONSTRUCT = "reconstruct"
    MULTIVIEW = "multiview"
    ENHANCE = "enhance"
    REFINE = "refine"
    EXPORT = "export"


def can_transition(src: JobState, dst: JobState) -> bool:
    return dst in TRANSITIONS[src]


def check_transition(src: JobState, dst: JobState, *, job: str = "") -> None:
    """Raise FailedPrecondition naming both states if ``src -> dst`` is not allowed."""
    if not can_transition(src, dst):
        subject = f"job {job}" if job else "job"
        raise FailedPrecondition(
            f"{subject} cannot go from {src.value} to {dst.value}",
            metadata={"from": src.value, "to": dst.value},
        )
