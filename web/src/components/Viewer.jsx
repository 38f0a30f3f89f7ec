// The splat on screen. The three.js + Spark viewer is loaded on first use (it is most of the bundle),
// drawn into this component's box, and handed to the parent through onViewer so "Enhance this view" can
// read its camera. With a comparison version, a second, passive viewer draws that version over the left
// part of the box, following the main camera, split by a slider: before on the left, after on the right.

import { useEffect, useRef, useState } from "react";

function loadViewerModule() {
  return import("../viewer/SplatViewer.js");
}

/**
 * The splat a URL names: the URL without its `sig` (with authentication on, a job's links are signed for
 * minutes and re-signed now and then; the splat behind them stays the same and is not loaded again).
 */
export function splatKey(url) {
  if (!url) return url;
  const [path, query = ""] = url.split("?", 2);
  const kept = query.split("&").filter((part) => part && !part.startsWith("sig="));
  return kept.length ? `${path}?${kept.join("&")}` : path;
}

function useSplat(viewer, url) {
  const [state, setState] = useState({ status: "empty", error: "", count: 0 });
  const latest = useRef(url);
  latest.current = url;
  const key = splatKey(url);
  useEffect(() => {
    if (!viewer || !key) {
      setState({ status: "empty", error: "", count: 0 });
      return undefined;
    }
    let live = true;
    setState((s) => ({ ...s, status: "loading", error: "" }));
    viewer.load(latest.current).then(
      (count) => {
        if (live && count !== null) setState({ status: "ready", error: "", count });
      },
      (err) => {
        if (live) setState({ status: "error", error: err.message, count: 0 });
      },
    );
    return () => {
      live = false;
    };
  }, [viewer, key]);
  return state;
}

/**
 * @param {{splatUrl: string|null, version: number|null, compareUrl?: string|null, compareVersion?: number|null,
 *          onViewer?: (viewer: object|null) => void}} props
 */
export default function Viewer({ splatUrl, version, compareUrl = null, compareVersion = null, onViewer }) {
  const mainRef = useRef(null);
  const overlayRef = useRef(null);
  const [viewer, setViewer] = useState(null);
  const [overlay, setOverlay] = useState(null);
  const [setupError, setSetupError] = useState("");
  const [split, setSplit] = useState(50);
  const onViewerRef = useRef(onViewer);
  onViewerRef.current = onViewer;

  useEffect(() => {
    let created = null;
    let live = true;
    loadViewerModule()
      .then(({ SplatViewer }) => {
        if (!live) return;
        created = new SplatViewer(mainRef.current);
        setViewer(created);
        onViewerRef.current?.(created);
      })
      .catch((err) => setSetupError(`The 3D view cannot start in this browser (WebGL 2 is needed): ${err.message}`));
    return () => {
      live = false;
      onViewerRef.current?.(null);
      created?.dispose();
    };
  }, []);

  useEffect(() => {
    if (!viewer || !compareUrl) return undefined;
    let created = null;
    let unsubscribe = () => {};
    let live = true;
    loadViewerModule()
      .then(({ SplatViewer }) => {
        if (!live) return;
        created = new SplatViewer(overlayRef.current, { interactive: false });
        created.copyView(viewer);
        unsubscribe = viewer.onChange(() => created.copyView(viewer));
        setOverlay(created);
      })
      .catch((err) => setSetupError(`The comparison view cannot start: ${err.message}`));
    return () => {
      live = false;
      unsubscribe();
      created?.dispose();
      setOverlay(null);
    };
  }, [viewer, compareUrl]);

  const main = useSplat(viewer, splatUrl);
  const before = useSplat(overlay, compareUrl);
  const comparing = Boolean(compareUrl);

  return (
    <section className="viewer" aria-label="3D view">
      <div className="viewer-stage">
        <div
          className="viewer-main"
          ref={mainRef}
          data-testid="viewer"
          data-status={main.status}
          data-version={main.status === "ready" ? version : ""}
          data-gaussians={main.count || ""}
        />
        <div
          className={comparing ? "viewer-overlay" : "viewer-overlay viewer-overlay-hidden"}
          ref={overlayRef}
          data-testid="viewer-compare"
          data-status={before.status}
          style={{ clipPath: `inset(0 ${100 - split}% 0 0)` }}
        />
        {comparing ? (
          <>
            <div className="split-line" style={{ left: `${split}%` }} aria-hidden="true" />
            <span className="corner-label corner-left">before · v{compareVersion}</span>
            <span className="corner-label corner-right">after · v{version}</span>
          </>
        ) : null}
        {main.status === "empty" && !setupError ? (
          <p className="viewer-note">Your splat appears here. Drag to orbit, scroll to zoom, right-drag to pan.</p>
        ) : null}
        {main.status === "loading" ? <p className="viewer-note">Loading v{version}…</p> : null}
        {setupError || main.error || before.error ? (
          <p className="viewer-note message-error" role="alert">
            {setupError || main.error || before.error}
          </p>
        ) : null}
      </div>
      <div className="viewer-tools">
        <button type="button" onClick={() => viewer?.resetView()} disabled={!viewer}>
          Reset view
        </button>
        {comparing ? (
          <label className="split-slider">
            Before / after
            <input
              type="range"
              min="0"
              max="100"
              value={split}
              aria-label="Before and after split"
              onChange={(e) => setSplit(Number(e.target.value))}
            />
          </label>
        ) : null}
        {main.count ? <span className="hint">{main.count.toLocaleString("en-US")} Gaussians</span> : null}
      </div>
    </section>
  );
}
