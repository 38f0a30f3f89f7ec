// The matte before generating: the photo with what the job will treat as background dimmed, and the
// user's corrections. A click on the photo adds a point: "Keep" says the object is there, "Remove" says
// background is there; the gateway recomputes the matte with every point (GrabCut seeded by them, in the
// weight-free default) and the preview updates. The gateway's plausibility warning is shown as it comes.

import { useEffect, useState } from "react";

import { percent } from "../format.js";
import ErrorMessage from "./ErrorMessage.jsx";

const MAX_POINTS = 64; // the gateway's limit (JobOptions.matte_points)
const PREVIEW_DELAY_MS = 250;

/**
 * @param {{photoUrl: string, file: File, points: number[][], onPoints: (p: number[][]) => void,
 *          previewMatte: (file: File, points: number[][]) => Promise<object>}} props
 */
export default function MatteEditor({ photoUrl, file, points, onPoints, previewMatte }) {
  const [matte, setMatte] = useState(null);
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  const [keep, setKeep] = useState(true);

  useEffect(() => {
    let live = true;
    setBusy(true);
    setError("");
    // Quick clicks are gathered: only the last set of points is asked for (and an answer that comes
    // after the points changed again is dropped).
    const timer = setTimeout(
      () => {
        previewMatte(file, points)
          .then((m) => live && setMatte(m))
          .catch((err) => live && setError(err && err.message ? err.message : String(err)))
          .finally(() => live && setBusy(false));
      },
      points.length ? PREVIEW_DELAY_MS : 0,
    );
    return () => {
      live = false;
      clearTimeout(timer);
    };
  }, [file, points, previewMatte]);

  function add(event) {
    if (points.length >= MAX_POINTS) {
      setError(`At most ${MAX_POINTS} points; undo or clear some first.`);
      return;
    }
    const rect = event.currentTarget.getBoundingClientRect();
    if (!rect.width || !rect.height) return;
    const x = Math.min(1, Math.max(0, (event.clientX - rect.left) / rect.width));
    const y = Math.min(1, Math.max(0, (event.clientY - rect.top) / rect.height));
    onPoints([...points, [Number(x.toFixed(4)), Number(y.toFixed(4)), keep]]);
  }

  return (
    <div className="matte-editor" data-testid="matte-editor">
      <div className="matte-tools" role="group" aria-label="Matte correction">
        <label>
          <input type="radio" name="matte-mode" checked={keep} onChange={() => setKeep(true)} /> Keep (object)
        </label>
        <label>
          <input type="radio" name="matte-mode" checked={!keep} onChange={() => setKeep(false)} /> Remove
          (background)
        </label>
        <button type="button" disabled={!points.length} onClick={() => onPoints(points.slice(0, -1))}>
          Undo point
        </button>
        <button type="button" disabled={!points.length} onClick={() => onPoints([])}>
          Clear points
        </button>
      </div>
      <div
        className="matte-stage"
        data-testid="matte-stage"
        role="button"
        tabIndex={-1}
        aria-label="Click to mark object or background"
        onClick={add}
        onKeyDown={() => {}}
      >
        <img src={photoUrl} alt="Photo with its matte" />
        {matte ? <img className="matte-mask" src={matte.mask} alt="" data-testid="matte-mask" /> : null}
        {points.map(([x, y, k], i) => (
          <span
            key={i}
            className={k ? "matte-point matte-keep" : "matte-point matte-remove"}
            style={{ left: `${x * 100}%`, top: `${y * 100}%` }}
            data-testid="matte-point"
          />
        ))}
      </div>
      <p className="matte-status" data-testid="matte-status">
        {busy
          ? "Finding the object…"
          : matte
            ? `Object: ${percent(matte.coverage, 0)} of the photo` +
              (points.length ? ` · ${points.length} correction${points.length > 1 ? "s" : ""}` : "")
            : ""}
      </p>
      {matte && matte.warning ? (
        <p className="message message-warning" role="status" data-testid="matte-warning">
          The matte looks wrong: {matte.warning} Click to mark what is object and what is background.
        </p>
      ) : null}
      <ErrorMessage>{error}</ErrorMessage>
    </div>
  );
}
