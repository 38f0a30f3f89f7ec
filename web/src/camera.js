// The viewer's camera as the gateway understands it. The splat lives in the project's world frame
// (right-handed, +y up, object at the origin with a radius of about 1), which is also three.js's
// convention, so the three.js camera is sent as it is: position, orbit target, up vector and vertical
// field of view. The image size keeps the canvas's aspect ratio, scaled down so that the longer side is
// at most ENHANCE_MAX_SIDE pixels: the view is the same, and a round costs what a 512 px view costs.

/** The view the pipeline's input camera has: on +z at distance 2.7, 40 degree vertical field of view. */
export const DEFAULT_VIEW = Object.freeze({
  position: Object.freeze([0, 0, 2.7]),
  target: Object.freeze([0, 0, 0]),
  up: Object.freeze([0, 1, 0]),
  fovYDeg: 40,
});

export const ENHANCE_MAX_SIDE = 512;

/** [width, height] with the aspect of (width, height), the longer side at most maxSide, each >= 1. */
export function fitSize(width, height, maxSide = ENHANCE_MAX_SIDE) {
  if (!(width > 0 && height > 0)) throw new Error(`The view has no size (${width} x ${height}).`);
  const scale = Math.min(1, maxSide / Math.max(width, height));
  return [Math.max(1, Math.round(width * scale)), Math.max(1, Math.round(height * scale))];
}

function vec3(name, v) {
  const out = [v.x ?? v[0], v.y ?? v[1], v.z ?? v[2]].map(Number);
  if (!out.every(Number.isFinite)) throw new Error(`The camera ${name} is not a finite 3-vector.`);
  return out;
}

/**
 * The body of POST /jobs/{id}/enhance for a three.js PerspectiveCamera looking at `target`
 * (an orbit controls target) in a canvas of width x height CSS pixels.
 */
export function cameraPayload(camera, target, width, height, maxSide = ENHANCE_MAX_SIDE) {
  const position = vec3("position", camera.position);
  const at = vec3("target", target);
  const up = vec3("up", camera.up);
  if (position.every((p, i) => Math.abs(p - at[i]) < 1e-9)) {
    throw new Error("The camera sits on its target; move it away first.");
  }
  const fov = Number(camera.fov);
  if (!(fov > 0 && fov < 180)) throw new Error(`The camera field of view must be in (0, 180) degrees, got ${fov}.`);
  const [w, h] = fitSize(width, height, maxSide);
  return { camera: { position, target: at, up, fov_y_deg: fov, width: w, height: h } };
}
