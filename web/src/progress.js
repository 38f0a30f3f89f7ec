// The stage timeline shown while a job runs, built from the stream of Job snapshots: one entry per
// stage in the order the stages were seen, each with its latest message and fraction. A stage is done
// once a later stage starts, or when the work it belongs to finishes.

/**
 * @typedef {{stage: string, message: string, fraction: number, status: "active"|"done"|"failed"}} StageEntry
 */

/**
 * The timeline after one more Job snapshot.
 * @param {StageEntry[]} timeline
 * @param {object} job a Job from the facade
 * @returns {StageEntry[]}
 */
export function advanceTimeline(timeline, job) {
  const progress = job?.progress ?? {};
  const stage = progress.stage || "";
  let next = timeline.slice();
  if (stage) {
    const last = next[next.length - 1];
    const entry = { stage, message: progress.message || "", fraction: Number(progress.fraction) || 0 };
    if (last && last.stage === stage && last.status === "active") {
      next[next.length - 1] = { ...last, ...entry };
    } else {
      next = next.map((e) => (e.status === "active" ? { ...e, status: "done" } : e));
      next.push({ ...entry, status: "active" });
    }
  }
  if (job?.done) {
    // A failed or cancelled round leaves the job SUCCEEDED (its versions stay) with an error set.
    const failed = job.state === "FAILED" || job.state === "CANCELLED" || Boolean(job.error);
    next = next.map((e) => (e.status === "active" ? { ...e, status: failed ? "failed" : "done" } : e));
  }
  return next;
}

/** A new round starts a new timeline (the previous one described the previous piece of work). */
export function startsNewWork(previous, job) {
  if (!previous) return true;
  return previous.done && !job.done;
}
