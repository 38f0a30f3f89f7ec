// Step 3: one click, one enhancement round. "Enhance this view" sends the viewer's current camera (what
// the user is looking at); "Auto" lets the gateway pick the view the splat is least sure about. An
// optional prompt steers the diffusion backend for this round (empty: the job's prompt).

import { useState } from "react";

import { cameraPayload } from "../camera.js";
import ErrorMessage from "./ErrorMessage.jsx";

const MAX_PROMPT_CHARS = 1000;

/**
 * @param {{getView: () => ({camera: object, target: object, width: number, height: number}|null),
 *          enhance: (body: object) => Promise<object>, disabled?: boolean, pendingRounds?: number}} props
 *   getView: the viewer's three.js camera, orbit target and canvas size; enhance: POSTs the body
 */
export default function EnhancePanel({ getView, enhance, disabled = false, pendingRounds = 0 }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState("");
  const [prompt, setPrompt] = useState("");

  async function send(makeBody) {
    setError("");
    let body;
    try {
      body = makeBody();
    } catch (err) {
      setError(err.message);
      return;
    }
    if (prompt.trim()) body = { ...body, prompt: prompt.trim() };
    setBusy(true);
    try {
      await enhance(body);
    } catch (err) {
      setError(err && err.message ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  }

  function currentView() {
    const view = getView();
    if (!view) throw new Error("The viewer is not ready yet.");
    return cameraPayload(view.camera, view.target, view.width, view.height);
  }

  return (
    <section className="panel enhance-panel" aria-label="Enhance">
      <h2>3 · Enhance</h2>
      <p className="hint">Orbit to a view that looks wrong, then enhance it. Each click adds a version.</p>
      <label className="prompt">
        Prompt (optional)
        <input
          value={prompt}
          maxLength={MAX_PROMPT_CHARS}
          onChange={(e) => setPrompt(e.target.value)}
          placeholder="the job's prompt"
        />
      </label>
      <div className="buttons">
        <button type="button" className="primary" disabled={disabled || busy} onClick={() => send(currentView)}>
          Enhance this view
        </button>
        <button type="button" disabled={disabled || busy} onClick={() => send(() => ({ auto: true }))}>
          Auto
        </button>
      </div>
      {pendingRounds > 0 ? (
        <p className="message message-note" data-testid="pending-rounds">
          {pendingRounds === 1 ? "1 round in progress" : `${pendingRounds} rounds queued`}
        </p>
      ) : null}
      <ErrorMessage>{error}</ErrorMessage>
    </section>
  );
}
