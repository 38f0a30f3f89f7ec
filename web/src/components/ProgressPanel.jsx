// Step 2: live progress. The job's state, the overall progress bar and one line per stage seen so far
// (from the server-sent events), plus the job's error when a run or a round failed.

import { percent, STATE_LABELS, stageLabel } from "../format.js";
import ErrorMessage from "./ErrorMessage.jsx";

const STATUS_MARK = { active: "…", done: "✓", failed: "✗" };

/**
 * @param {{job: object|null, timeline: object[], connection?: string, onCancel?: () => void}} props
 *   connection: a note about the event stream (e.g. reconnecting), shown when set
 */
export default function ProgressPanel({ job, timeline, connection = "", onCancel }) {
  if (!job) return null;
  const fraction = Math.min(1, Math.max(0, Number(job.progress?.fraction) || 0));
  const running = !job.done || job.pending_rounds > 0;
  const state = job.state || "QUEUED";
  return (
    <section className="panel progress-panel" aria-label="Progress">
      <h2>
        2 · Progress
        <span className={`badge badge-${state.toLowerCase()}`} data-testid="job-state">
          {STATE_LABELS[state] ?? state}
        </span>
      </h2>
      <div
        className="progressbar"
        role="progressbar"
        aria-valuemin={0}
        aria-valuemax={100}
        aria-valuenow={Math.round(fraction * 100)}
        aria-label="Overall progress"
      >
        <div className="progressbar-fill" style={{ width: `${fraction * 100}%` }} />
      </div>
      <p className="progress-now" data-testid="progress-now">
        {running ? `${stageLabel(job.progress?.stage)} · ${percent(fraction)}` : "Idle"}
        {running && job.progress?.message ? ` — ${job.progress.message}` : ""}
        {job.pending_rounds > 1 ? ` (${job.pending_rounds} rounds queued)` : ""}
      </p>
      {timeline.length ? (
        <ol className="timeline">
          {timeline.map((entry, i) => (
            <li key={`${entry.stage}-${i}`} className={`step step-${entry.status}`} data-stage={entry.stage}>
              <span className="step-mark" aria-hidden="true">
                {STATUS_MARK[entry.status]}
              </span>
              <span className="step-name">{stageLabel(entry.stage)}</span>
              {entry.message && entry.message.toLowerCase() !== stageLabel(entry.stage).toLowerCase() ? (
                <span className="step-message">{entry.message}</span>
              ) : null}
            </li>
          ))}
        </ol>
      ) : null}
      <ErrorMessage>{job.error ? job.error.message || job.error.code : null}</ErrorMessage>
      {connection ? <p className="message message-note">{connection}</p> : null}
      {running && onCancel ? (
        <button type="button" onClick={onCancel}>
          Cancel
        </button>
      ) : null}
    </section>
  );
}
