import { fireEvent, render, screen, waitFor } from "@testing-library/react";
import * as THREE from "three";
import { describe, expect, it, vi } from "vitest";

import { ApiError } from "../src/api.js";
import { cameraPayload, DEFAULT_VIEW, fitSize } from "../src/camera.js";
import EnhancePanel from "../src/components/EnhancePanel.jsx";

function orbitCamera(position, fov = 40) {
  const camera = new THREE.PerspectiveCamera(fov, 2, 0.01, 100);
  camera.position.set(...position);
  camera.lookAt(0, 0.25, 0);
  return camera;
}

describe("cameraPayload", () => {
  it("sends the three.js camera in the world frame with a bounded image size", () => {
    const camera = orbitCamera([1.5, 1, 2], 50);
    const body = cameraPayload(camera, new THREE.Vector3(0, 0.25, 0), 1024, 512);
    expect(body).toEqual({
      camera: { position: [1.5, 1, 2], target: [0, 0.25, 0], up: [0, 1, 0], fov_y_deg: 50, width: 512, height: 256 },
    });
  });

  it("keeps a small canvas at its size and the aspect of a tall one", () => {
    expect(fitSize(400, 300)).toEqual([400, 300]);
    expect(fitSize(600, 1200)).toEqual([256, 512]);
    expect(fitSize(1001, 3)).toEqual([512, 2]);
    expect(() => fitSize(0, 300)).toThrow("The view has no size (0 x 300).");
  });

  it("matches the pipeline's input camera for the default view", () => {
    const camera = orbitCamera(DEFAULT_VIEW.position, DEFAULT_VIEW.fovYDeg);
    const body = cameraPayload(camera, DEFAULT_VIEW.target, 256, 256);
    expect(body.camera).toEqual({ position: [0, 0, 2.7], target: [0, 0, 0], up: [0, 1, 0], fov_y_deg: 40, width: 256, height: 256 });
  });

  it("refuses a degenerate camera", () => {
    const camera = orbitCamera([0, 0, 0]);
    expect(() => cameraPayload(camera, [0, 0, 0], 100, 100)).toThrow("The camera sits on its target; move it away first.");
    const bad = orbitCamera([0, 0, 2]);
    bad.position.x = Number.NaN;
    expect(() => cameraPayload(bad, [0, 0, 0], 100, 100)).toThrow("The camera position is not a finite 3-vector.");
  });
});

describe("EnhancePanel", () => {
  it("posts the viewer's current camera", async () => {
    const camera = orbitCamera([-2, 0.5, 1.2], 40);
    const enhance = vi.fn(async () => ({}));
    const getView = () => ({ camera, target: new THREE.Vector3(0, 0.25, 0), width: 800, height: 600 });
    render(<EnhancePanel getView={getView} enhance={enhance} />);
    fireEvent.click(screen.getByRole("button", { name: "Enhance this view" }));
    await waitFor(() => expect(enhance).toHaveBeenCalledTimes(1));
    expect(enhance.mock.calls[0][0]).toEqual({
      camera: { position: [-2, 0.5, 1.2], target: [0, 0.25, 0], up: [0, 1, 0], fov_y_deg: 40, width: 512, height: 384 },
    });
  });

  it("asks for an automatic view, with the prompt when one is typed", async () => {
    const enhance = vi.fn(async () => ({}));
    render(<EnhancePanel getView={() => null} enhance={enhance} />);
    fireEvent.click(screen.getByRole("button", { name: "Auto" }));
    await waitFor(() => expect(enhance).toHaveBeenCalledWith({ auto: true }));
    fireEvent.change(screen.getByLabelText("Prompt (optional)"), { target: { value: "  weathered oak  " } });
    fireEvent.click(screen.getByRole("button", { name: "Auto" }));
    await waitFor(() => expect(enhance).toHaveBeenLastCalledWith({ auto: true, prompt: "weathered oak" }));
  });

  it("explains when there is no view yet or the gateway refuses", async () => {
    const enhance = vi.fn(async () => {
      throw new ApiError("job j1 has 4 rounds queued; the limit is 4", { status: 429, code: "RESOURCE_EXHAUSTED" });
    });
    render(<EnhancePanel getView={() => null} enhance={enhance} />);
    fireEvent.click(screen.getByRole("button", { name: "Enhance this view" }));
    expect((await screen.findByRole("alert")).textContent).toBe("The viewer is not ready yet.");
    expect(enhance).not.toHaveBeenCalled();
    fireEvent.click(screen.getByRole("button", { name: "Auto" }));
    await waitFor(() => expect(screen.getByRole("alert").textContent).toBe("job j1 has 4 rounds queued; the limit is 4"));
  });

  it("is disabled until there is a version, and shows queued rounds", () => {
    const { rerender } = render(<EnhancePanel getView={() => null} enhance={vi.fn()} disabled />);
    expect(screen.getByRole("button", { name: "Enhance this view" }).disabled).toBe(true);
    expect(screen.getByRole("button", { name: "Auto" }).disabled).toBe(true);
    rerender(<EnhancePanel getView={() => null} enhance={vi.fn()} pendingRounds={2} />);
    expect(screen.getByTestId("pending-rounds").textContent).toBe("2 rounds queued");
  });
});
