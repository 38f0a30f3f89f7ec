// Test data shaped like the facade's JSON (see docs/http-api.md): jobs, versions, photos.

export const PNG_BYTES = new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13]);
export const JPEG_BYTES = new Uint8Array([0xff, 0xd8, 0xff, 0xe0, 0, 16, 0x4a, 0x46]);
export const WEBP_BYTES = new TextEncoder().encode("RIFF\x24\x00\x00\x00WEBPVP8 ");

export function pngFile(name = "sample.png") {
  return new File([PNG_BYTES], name, { type: "image/png" });
}

function downloads(id, n) {
  const base = `/api/v1/jobs/${id}/versions/${n}/download?format=`;
  return { ply: `${base}ply`, splat: `${base}splat`, glb: `${base}glb`, spz: `${base}spz`, sog: `${base}sog` };
}

export function initialVersion(id = "j1") {
  return {
    number: 1,
    parent: null,
    kind: "initial",
    camera: null,
    metrics: { input_view_psnr_db: 27.25, num_gaussians: 12000, num_views: 0, seconds: 3.21 },
    num_gaussians: 12000,
    create_time: "2026-01-02T10:00:00Z",
    downloads: downloads(id, 1),
  };
}

export function enhanceVersion(id = "j1", n = 2) {
  return {
    number: n,
    parent: n - 1,
    kind: "enhance",
    camera: { position: [1, 0.5, 2.4], target: [0, 0, 0], up: [0, 1, 0], fov_y_deg: 40, width: 512, height: 384 },
    metrics: {
      accepted_fraction: 0.8333,
      enhanced_view_error_before: 0.02,
      enhanced_view_error_after: 0.012,
      input_view_psnr_db: 27.0,
      input_view_psnr_change_db: -0.3,
      input_view_ssim: 0.9123,
      mean_confidence: 0.5,
      steps: 60,
      seconds: 8.5,
    },
    report: { rejected: false, clip_note: "", clip_score: null },
    num_gaussians: 12000,
    create_time: "2026-01-02T10:01:00Z",
    downloads: downloads(id, n),
  };
}

export function job(overrides = {}) {
  const id = overrides.id ?? "j1";
  return {
    id,
    name: `jobs/${id}`,
    display_name: "sample",
    state: "RUNNING",
    done: false,
    progress: { stage: "matting_depth", fraction: 0.1, message: "matting and depth" },
    error: null,
    versions: [],
    pending_rounds: 0,
    create_time: "2026-01-02T10:00:00Z",
    update_time: "2026-01-02T10:00:01Z",
    ...overrides,
  };
}

/** A fake EventSource: tests push events with emit(type, data) and read what the client did. */
export class FakeEventSource {
  static instances = [];

  constructor(url) {
    this.url = url;
    this.readyState = 1;
    this.listeners = {};
    this.onerror = null;
    FakeEventSource.instances.push(this);
  }

  addEventListener(type, fn) {
    (this.listeners[type] ??= []).push(fn);
  }

  emit(type, data) {
    for (const fn of this.listeners[type] ?? []) fn({ type, data: typeof data === "string" ? data : JSON.stringify(data) });
  }

  fail(readyState) {
    this.readyState = readyState;
    this.onerror?.({ type: "error" });
  }

  close() {
    this.readyState = 2;
    this.closed = true;
  }
}
