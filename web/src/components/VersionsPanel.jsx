// Version history: every version of the job (the initial reconstruction, then one per enhancement
// round), newest first, with each round's report (accepted pixels, its fit to the enhanced view before
// and after) and every version's figures against the photo (PSNR and SSIM at the photo's camera inside
// the matte, with the round's change, and the consistency of the turned views with the photo), which a
// round cannot improve by construction.
// Picking a version shows it; "Compare with" puts another version beside it behind a slider. "Go on from
// vN" (an earlier version, while the job takes rounds) queues a round that adds a copy of it as the latest
// version, after any rounds already queued: later rounds start from it, and nothing is deleted.

import { useState } from "react";

import { errorChange, formatTime, metricRows, percent } from "../format.js";
import ErrorMessage from "./ErrorMessage.jsx";

function num(v) {
  return typeof v === "number" && Number.isFinite(v);
}

const KIND_LABELS = { initial: "initial", enhance: "enhanced", restore: "restored" };

function summary(version) {
  const m = version.metrics ?? {};
  const parts = [];
  if (version.kind === "enhance") {
    if (version.report?.rejected) parts.push("rejected");
    if (num(m.accepted_fraction)) parts.push(`accepted ${percent(m.accepted_fraction, 1)}`);
    if (num(m.enhanced_view_error_before) && num(m.enhanced_view_error_after)) {
      const change = errorChange(m);
      parts.push(
        `fit to the enhanced view ${m.enhanced_view_error_before.toFixed(4)} → ` +
          `${m.enhanced_view_error_after.toFixed(4)}` + (change ? ` (${change})` : ""),
      );
    }
  }
  if (num(m.input_view_psnr_db)) {
    const change = num(m.input_view_psnr_change_db)
      ? ` (${m.input_view_psnr_change_db >= 0 ? "+" : ""}${m.input_view_psnr_change_db.toFixed(2)} dB)`
      : "";
    parts.push(`input view vs photo ${m.input_view_psnr_db.toFixed(1)} dB${change}`);
  }
  if (num(m.input_view_ssim)) parts.push(`SSIM ${m.input_view_ssim.toFixed(3)}`);
  if (version.kind !== "enhance") {
    if (num(m.matte_coverage)) parts.push(`matte ${percent(m.matte_coverage, 0)} of the photo`);
    if (version.num_gaussians) parts.push(`${Number(version.num_gaussians).toLocaleString("en-US")} Gaussians`);
  }
  if (num(m.photo_consistency_db)) parts.push(`turned views vs photo ${m.photo_consistency_db.toFixed(1)} dB`);
  return parts.join(" · ");
}

/**
 * @param {{versions: object[], selected: number|null, compareWith: number|null,
 *          onSelect: (n: number) => void, onCompare: (n: number|null) => void,
 *          onRestore?: ((n: number) => void) | null}} props
 */
export default function VersionsPanel({ versions, selected, compareWith, onSelect, onCompare, onRestore = null }) {
  const [restoreError, setRestoreError] = useState("");
  const [restoring, setRestoring] = useState(false);
  if (!versions || versions.length === 0) return null;
  const current = versions.find((v) => v.number === selected) ?? versions[versions.length - 1];
  const newestFirst = versions.slice().reverse();
  return (
    <section className="panel versions-panel" aria-label="Versions">
      <h2>4 · Versions</h2>
      <ul className="versions" data-testid="versions">
        {newestFirst.map((v) => (
          <li key={v.number} className={v.number === current.number ? "version version-selected" : "version"}>
            <button
              type="button"
              className="version-button"
              aria-pressed={v.number === current.number}
              data-version={v.number}
              onClick={() => onSelect(v.number)}
            >
              <span className="version-title">
                v{v.number} · {KIND_LABELS[v.kind] ?? v.kind}
                {v.parent ? ` from v${v.parent}` : ""}
              </span>
              <span className="version-time">{formatTime(v.create_time)}</span>
              <span className="version-summary">{summary(v)}</span>
            </button>
          </li>
        ))}
      </ul>
      {onRestore && current.number !== versions[versions.length - 1].number ? (
        <button
          type="button"
          className="button restore-button"
          disabled={restoring}
          onClick={async () => {
            setRestoreError("");
            setRestoring(true);
            try {
              await onRestore(current.number);
            } catch (err) {
              setRestoreError(err.message);
            } finally {
              setRestoring(false);
            }
          }}
        >
          Go on from v{current.number}
        </button>
      ) : null}
      <ErrorMessage>{restoreError}</ErrorMessage>
      <h3>v{current.number} metrics</h3>
      {current.report?.clip_note ? <p className="hint">{current.report.clip_note}</p> : null}
      <dl className="metrics" data-testid="metrics">
        {metricRows(current.metrics).map((row) => (
          <div key={row.name} className="metric" data-metric={row.name}>
            <dt>{row.label}</dt>
            <dd>{row.value}</dd>
          </div>
        ))}
      </dl>
      {versions.length > 1 ? (
        <label className="compare-select">
          Compare v{current.number} with
          <select
            value={compareWith ?? ""}
            onChange={(e) => onCompare(e.target.value === "" ? null : Number(e.target.value))}
          >
            <option value="">(no comparison)</option>
            {versions
              .filter((v) => v.number !== current.number)
              .map((v) => (
                <option key={v.number} value={v.number}>
                  v{v.number}
                </option>
              ))}
          </select>
        </label>
      ) : null}
    </section>
  );
}
