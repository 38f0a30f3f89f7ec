// One interactive view of a Gaussian splat: a three.js scene drawn by Spark (@sparkjsdev/spark, a
// maintained three.js Gaussian-splat renderer that sorts splats in a worker), a perspective camera with
// orbit controls, and a canvas that follows its container's size.
//
// The splat is in the project's world frame, which is three.js's own (+y up), so it is added without any
// rotation and the default camera (+z, distance 2.7, 40 degree vertical fov) shows the object upright,
// as the photo showed it.
//
// Frames are drawn on demand: for a short burst after anything changes (camera, size, a new splat) and
// whenever Spark says its sort for the new viewpoint came back from the worker (onDirty), and not at all
// while the view is still, so an idle tab costs no CPU that the local services could use.

import { SparkRenderer, SplatMesh } from "@sparkjsdev/spark";
import * as THREE from "three";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";

import { DEFAULT_VIEW } from "../camera.js";

const BURST_MS = 1200;
const DIRTY_MS = 100;

export class SplatViewer {
  /**
   * @param {HTMLElement} container the element the canvas fills
   * @param {{interactive?: boolean, background?: number}} options interactive: orbit controls on the
   *   canvas (a passive viewer copies another one's camera instead)
   */
  constructor(container, { interactive = true, background = 0x1b1d22 } = {}) {
    this.container = container;
    // preserveDrawingBuffer keeps the last frame readable (screenshots, pixel checks).
    this.renderer = new THREE.WebGLRenderer({ antialias: false, preserveDrawingBuffer: true });
    this.renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
    this.renderer.setClearColor(background, 1);
    this.canvas = this.renderer.domElement;
    this.canvas.className = "viewer-canvas";
    container.appendChild(this.canvas);

    this.scene = new THREE.Scene();
    this.camera = new THREE.PerspectiveCamera(DEFAULT_VIEW.fovYDeg, 1, 0.01, 100);
    this.spark = new SparkRenderer({ renderer: this.renderer, onDirty: () => this.requestRender(DIRTY_MS) });
    this.scene.add(this.spark);
    this.mesh = null;
    this.loadToken = 0;
    this.listeners = new Set();
    this.renderUntil = 0;

    this.controls = null;
    if (interactive) {
      this.controls = new OrbitControls(this.camera, this.canvas);
      this.controls.addEventListener("change", () => this.changed());
    }
    this.target = this.controls ? this.controls.target : new THREE.Vector3();
    this.resetView();

    this.resizeObserver = new ResizeObserver(() => this.resize());
    this.resizeObserver.observe(container);
    this.resize();
    this.renderer.setAnimationLoop(() => this.frame());
  }

  /** Calls fn() after every camera change (orbit, zoom, pan, reset); returns a function that unsubscribes. */
  onChange(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  changed() {
    this.requestRender();
    for (const fn of this.listeners) fn();
  }

  requestRender(ms = BURST_MS) {
    this.renderUntil = Math.max(this.renderUntil, performance.now() + ms);
  }

  frame() {
    if (performance.now() > this.renderUntil) return;
    this.renderer.render(this.scene, this.camera);
  }

  resize() {
    const width = Math.max(1, this.container.clientWidth);
    const height = Math.max(1, this.container.clientHeight);
    this.renderer.setSize(width, height, false);
    this.camera.aspect = width / height;
    this.camera.updateProjectionMatrix();
    this.requestRender();
  }

  /** Back to the pipeline's input view. */
  resetView() {
    this.camera.position.fromArray(DEFAULT_VIEW.position);
    this.camera.up.fromArray(DEFAULT_VIEW.up);
    this.camera.fov = DEFAULT_VIEW.fovYDeg;
    this.target.fromArray(DEFAULT_VIEW.target);
    this.camera.lookAt(this.target);
    this.camera.updateProjectionMatrix();
    if (this.controls) this.controls.update();
    this.changed();
  }

  /** Takes another viewer's camera (the before/after comparison follows the main view this way). */
  copyView(other) {
    this.camera.position.copy(other.camera.position);
    this.camera.quaternion.copy(other.camera.quaternion);
    this.camera.up.copy(other.camera.up);
    this.camera.fov = other.camera.fov;
    this.target.copy(other.target);
    this.camera.updateProjectionMatrix();
    this.requestRender();
  }

  /** The current view: the three.js camera, its orbit target and the canvas size in CSS pixels. */
  view() {
    return {
      camera: this.camera,
      target: this.target,
      width: this.container.clientWidth,
      height: this.container.clientHeight,
    };
  }

  /**
   * Shows the `.splat` or `.spz` file at url in place of the current splat.
   * @returns {Promise<number|null>} the number of Gaussians, or null when a newer load replaced this one
   */
  async load(url) {
    const token = ++this.loadToken;
    const response = await fetch(url);
    if (!response.ok) {
      let message = `HTTP ${response.status}`;
      try {
        message = (await response.json()).error.message || message;
      } catch {
        // the status line is all there is
      }
      throw new Error(`Could not download the splat: ${message}`);
    }
    const bytes = new Uint8Array(await response.arrayBuffer());
    if (token !== this.loadToken) return null;
    // A .spz (Niantic's format, a gzip stream) is recognised by its magic; .splat has none.
    const fileType = bytes[0] === 0x1f && bytes[1] === 0x8b ? "spz" : "splat";
    const mesh = new SplatMesh({ fileBytes: bytes, fileType });
    await mesh.initialized;
    if (token !== this.loadToken || this.disposed) {
      mesh.dispose();
      return null;
    }
    if (this.mesh) {
      this.scene.remove(this.mesh);
      this.mesh.dispose();
    }
    this.mesh = mesh;
    this.scene.add(mesh);
    this.requestRender(2 * BURST_MS);
    return mesh.packedSplats ? mesh.packedSplats.numSplats : bytes.length / 32;
  }

  dispose() {
    this.disposed = true;
    this.loadToken += 1;
    this.renderer.setAnimationLoop(null);
    this.resizeObserver.disconnect();
    this.listeners.clear();
    if (this.controls) this.controls.dispose();
    if (this.mesh) this.mesh.dispose();
    this.spark.dispose?.();
    this.renderer.dispose();
    // Browsers cap live WebGL contexts; give this one back now rather than at garbage collection.
    this.renderer.forceContextLoss();
    this.canvas.remove();
  }
}
