// The whole workspace against a fake facade client: hash routing, live progress, versions, enhance,
// exports. The WebGL viewer is replaced by a stand-in that reports the camera a user would have.
import { act, fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import * as THREE from "three";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import { ApiError } from "../src/api.js";
import App from "../src/App.jsx";
import { enhanceVersion, initialVersion, job, pngFile } from "./helpers.js";

const viewerCamera = new THREE.PerspectiveCamera(40, 1, 0.01, 100);
viewerCamera.position.set(2, 1, 1);

vi.mock("../src/components/Viewer.jsx", () => ({
  default: function FakeViewer({ splatUrl, compareUrl, onViewer }) {
    onViewer?.({
      view: () => ({ camera: viewerCamera, target: new THREE.Vector3(0, 0, 0), width: 640, height: 480 }),
    });
    return (
      <div data-testid="viewer" data-url={splatUrl ?? ""} data-compare={compareUrl ?? ""}>
        viewer
      </div>
    );
  },
}));

function fakeApi() {
  const watchers = [];
  return {
    watchers,
    createJob: vi.fn(async () => job({ state: "QUEUED" })),
    listJobs: vi.fn(async () => ({ jobs: [job({ id: "old", display_name: "old chair", state: "SUCCEEDED", done: true })] })),
    getJob: vi.fn(async (id) => job({ id, state: "QUEUED", progress: { stage: "", fraction: 0, message: "" } })),
    enhance: vi.fn(async () => job({ state: "RUNNING", done: false, pending_rounds: 1, versions: [initialVersion()] })),
    cancel: vi.fn(),
    photoUrl: (id) => `/api/v1/jobs/${id}/photo`,
    downloadUrl: (id, n, f) => `/api/v1/jobs/${id}/versions/${n}/download?format=${f}`,
    watchJob: vi.fn((id, onJob, onError) => {
      const w = { id, onJob, onError, stopped: false };
      watchers.push(w);
      return () => {
        w.stopped = true;
      };
    }),
  };
}

describe("App", () => {
  beforeEach(() => {
    window.location.hash = "";
  });
  afterEach(() => {
    window.location.hash = "";
  });

  it("runs upload, live progress, enhance and export", async () => {
    const api = fakeApi();
    render(<App api={api} />);
    expect(await screen.findByText("old chair")).toBeTruthy();

    fireEvent.drop(screen.getByTestId("dropzone"), { dataTransfer: { files: [pngFile()] } });
    await screen.findByText(/sample\.png · 12 B/);
    fireEvent.click(screen.getByRole("button", { name: "Generate 3D" }));
    await waitFor(() => expect(api.watchJob).toHaveBeenCalledTimes(1));
    expect(window.location.hash).toBe("#/jobs/j1");
    expect(api.getJob).toHaveBeenCalledWith("j1");
    const watcher = api.watchers[0];

    act(() => watcher.onJob(job({ progress: { stage: "reconstruct", fraction: 0.5, message: "coarse reconstruction" } })));
    expect(screen.getByRole("progressbar").getAttribute("aria-valuenow")).toBe("50");
    expect(screen.getByTestId("viewer").getAttribute("data-url")).toBe("");

    act(() => watcher.onJob(job({ state: "SUCCEEDED", done: true, progress: { stage: "reconstruct", fraction: 1, message: "coarse splat ready" }, versions: [initialVersion()] })));
    expect(screen.getByTestId("job-state").textContent).toBe("Ready");
    expect(screen.getByTestId("viewer").getAttribute("data-url")).toBe("/api/v1/jobs/j1/versions/1/download?format=spz");

    fireEvent.click(screen.getByRole("button", { name: "Enhance this view" }));
    await waitFor(() => expect(api.enhance).toHaveBeenCalledTimes(1));
    expect(api.enhance.mock.calls[0]).toEqual([
      "j1",
      { camera: { position: [2, 1, 1], target: [0, 0, 0], up: [0, 1, 0], fov_y_deg: 40, width: 512, height: 384 } },
    ]);
    await waitFor(() => expect(api.watchJob).toHaveBeenCalledTimes(2));
    expect(watcher.stopped).toBe(true);
    expect(screen.getByTestId("pending-rounds").textContent).toBe("1 round in progress");

    const second = api.watchers[1];
    act(() => second.onJob(job({ state: "RUNNING", progress: { stage: "refine", fraction: 0.75, message: "fusing the enhanced view (MVCRM)" }, pending_rounds: 1, versions: [initialVersion()] })));
    expect(screen.getByTestId("progress-now").textContent).toContain("Fusing (MVCRM) · 75%");
    act(() => second.onJob(job({ state: "SUCCEEDED", done: true, progress: { stage: "refine", fraction: 1, message: "round done" }, versions: [initialVersion(), enhanceVersion()] })));
    expect(screen.getByTestId("viewer").getAttribute("data-url")).toBe("/api/v1/jobs/j1/versions/2/download?format=spz");
    expect(within(screen.getByTestId("metrics")).getByText("83.3%")).toBeTruthy();
    expect(screen.getByRole("link", { name: ".ply" }).getAttribute("href")).toBe("/api/v1/jobs/j1/versions/2/download?format=ply");

    fireEvent.change(screen.getByLabelText("Compare v2 with"), { target: { value: "1" } });
    expect(screen.getByTestId("viewer").getAttribute("data-compare")).toBe("/api/v1/jobs/j1/versions/1/download?format=spz");
    fireEvent.click(screen.getByRole("button", { name: /v1 · initial/ }));
    expect(screen.getByTestId("viewer").getAttribute("data-url")).toBe("/api/v1/jobs/j1/versions/1/download?format=spz");
    expect(screen.getByTestId("viewer").getAttribute("data-compare")).toBe("");
    expect(screen.getByRole("link", { name: ".glb" }).getAttribute("href")).toBe("/api/v1/jobs/j1/versions/1/download?format=glb");
  });

  it("opens the job in the URL and shows why it cannot", async () => {
    const api = fakeApi();
    api.getJob.mockImplementation(async () => {
      throw new ApiError("job gone not found", { status: 404, code: "NOT_FOUND" });
    });
    window.location.hash = "#/jobs/gone";
    render(<App api={api} />);
    expect((await screen.findByText("job gone not found")).getAttribute("role")).toBe("alert");
    expect(api.watchJob).not.toHaveBeenCalled();
    expect(screen.getByRole("button", { name: "Generate 3D" })).toBeTruthy();
  });

  it("shows the connection trouble the stream reports", async () => {
    const api = fakeApi();
    window.location.hash = "#/jobs/j1";
    render(<App api={api} />);
    await waitFor(() => expect(api.watchJob).toHaveBeenCalledWith("j1", expect.any(Function), expect.any(Function)));
    const watcher = api.watchers.at(-1);
    act(() => watcher.onError("Live progress interrupted; reconnecting"));
    expect(screen.getByText("Live progress interrupted; reconnecting")).toBeTruthy();
    act(() => watcher.onJob(job()));
    expect(screen.queryByText("Live progress interrupted; reconnecting")).toBeNull();
  });
});
