// Words and number formats for what the gateway reports: stage names, job states and version metrics.

export const STAGE_LABELS = {
  matting_depth: "Matting and depth",
  reconstruct: "Coarse reconstruction",
  multiview: "Novel views",
  enhance: "Enhancing the view",
  refine: "Fusing (MVCRM)",
  export: "Export",
};

export const STATE_LABELS = {
  QUEUED: "Queued",
  RUNNING: "Running",
  SUCCEEDED: "Ready",
  FAILED: "Failed",
  CANCELLED: "Cancelled",
};

export function stageLabel(stage) {
  return STAGE_LABELS[stage] ?? (stage ? stage.replaceAll("_", " ") : "Waiting");
}

export function percent(fraction, digits = 0) {
  const f = Number(fraction);
  return Number.isFinite(f) ? `${(f * 100).toFixed(digits)}%` : "–";
}

function fixed(digits) {
  return (v) => v.toFixed(digits);
}

// name -> [label, format]; metrics not listed here are shown under their own name.
const METRICS = {
  accepted_fraction: ["Accepted pixels", (v) => percent(v, 1)],
  enhanced_view_error_before: ["Fit to enhanced view, before", fixed(4)],
  enhanced_view_error_after: ["Fit to enhanced view, after", fixed(4)],
  clip_score: ["CLIP score", fixed(3)],
  mean_confidence: ["Mean confidence", fixed(3)],
  steps: ["Fusion steps", (v) => String(Math.round(v))],
  relift_replaced: ["Guessed Gaussians the photo replaced", (v) => Math.round(v).toLocaleString("en-US")],
  relift_added: ["Gaussians lifted from the photo", (v) => Math.round(v).toLocaleString("en-US")],
  pose_hint_kept: ["Pose: your hint kept (a side no photo had shown)", (v) => (v ? "yes" : "no")],
  restored_from: ["A copy of version", (v) => `v${Math.round(v)}`],
  input_view_psnr_db: ["Input view PSNR vs photo", (v) => `${fixed(1)(v)} dB`],
  input_view_psnr_change_db: ["Input view PSNR change", (v) => `${v >= 0 ? "+" : ""}${fixed(2)(v)} dB`],
  input_view_ssim: ["Input view SSIM vs photo", fixed(3)],
  matte_coverage: ["Matte coverage", (v) => percent(v, 1)],
  matte_border_fraction: ["Photo border covered by the matte", (v) => percent(v, 1)],
  matte_fragments: ["Matte pieces", (v) => String(Math.round(v))],
  matte_implausible: ["Matte looks wrong", (v) => (v ? "yes" : "no")],
  num_gaussians: ["Gaussians", (v) => Math.round(v).toLocaleString("en-US")],
  num_views: ["Novel views", (v) => String(Math.round(v))],
  seconds: ["Time", (v) => `${fixed(1)(v)} s`],
};

const ORDER = Object.keys(METRICS);

/** [{name, label, value}] for a version's metrics, known ones first in a fixed order. */
export function metricRows(metrics) {
  const names = Object.keys(metrics ?? {});
  names.sort((a, b) => {
    const ia = ORDER.includes(a) ? ORDER.indexOf(a) : ORDER.length;
    const ib = ORDER.includes(b) ? ORDER.indexOf(b) : ORDER.length;
    return ia - ib || a.localeCompare(b);
  });
  return names.map((name) => {
    const [label, format] = METRICS[name] ?? [name.replaceAll("_", " "), fixed(3)];
    // The facade sends null for a value that is not finite.
    const raw = metrics[name];
    const value = typeof raw === "number" && Number.isFinite(raw) ? format(raw) : "–";
    return { name, label, value };
  });
}

/** The change of the fit to the enhanced view over a round, e.g. "-42.0%", or null when not reported. */
export function errorChange(metrics) {
  const before = metrics?.enhanced_view_error_before;
  const after = metrics?.enhanced_view_error_after;
  if (!Number.isFinite(before) || !Number.isFinite(after) || before <= 0) return null;
  const change = (after - before) / before;
  return `${change > 0 ? "+" : ""}${(change * 100).toFixed(1)}%`;
}

export function formatTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleTimeString();
}
