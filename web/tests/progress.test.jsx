import { render, screen, within } from "@testing-library/react";
import { describe, expect, it, vi } from "vitest";

import ProgressPanel from "../src/components/ProgressPanel.jsx";
import { advanceTimeline, startsNewWork } from "../src/progress.js";
import { initialVersion, job } from "./helpers.js";

function progress(stage, fraction, message, extra = {}) {
  return job({ progress: { stage, fraction, message }, ...extra });
}

describe("advanceTimeline", () => {
  it("keeps one entry per stage, in order, and marks earlier ones done", () => {
    let t = [];
    t = advanceTimeline(t, job({ state: "QUEUED", progress: { stage: "", fraction: 0, message: "" } }));
    expect(t).toEqual([]);
    t = advanceTimeline(t, progress("matting_depth", 0, "matting and depth"));
    t = advanceTimeline(t, progress("reconstruct", 0.2, "coarse reconstruction"));
    t = advanceTimeline(t, progress("reconstruct", 0.9, "coarse splat ready"));
    expect(t).toEqual([
      { stage: "matting_depth", message: "matting and depth", fraction: 0, status: "done" },
      { stage: "reconstruct", message: "coarse splat ready", fraction: 0.9, status: "active" },
    ]);
    t = advanceTimeline(t, progress("reconstruct", 1, "coarse splat ready", { state: "SUCCEEDED", done: true }));
    expect(t.map((e) => e.status)).toEqual(["done", "done"]);
  });

  it("marks the running stage failed when the job fails or a round reports an error", () => {
    let t = advanceTimeline([], progress("reconstruct", 0.2, "coarse reconstruction"));
    const failed = progress("reconstruct", 0.2, "", { state: "FAILED", done: true, error: { code: "INTERNAL", message: "x" } });
    expect(advanceTimeline(t, failed).map((e) => e.status)).toEqual(["failed"]);
    t = advanceTimeline([], progress("enhance", 0.3, "enhancing the view"));
    const roundFailed = progress("enhance", 0.3, "", { state: "SUCCEEDED", done: true, error: { code: "DEADLINE_EXCEEDED", message: "slow" } });
    expect(advanceTimeline(t, roundFailed).map((e) => e.status)).toEqual(["failed"]);
  });

  it("starts a new timeline when new work starts on a finished job", () => {
    const finished = job({ state: "SUCCEEDED", done: true });
    expect(startsNewWork(null, job())).toBe(true);
    expect(startsNewWork(finished, job({ state: "RUNNING", done: false }))).toBe(true);
    expect(startsNewWork(job(), job())).toBe(false);
  });
});

describe("ProgressPanel", () => {
  it("shows the state, the overall fraction and every stage seen", () => {
    let t = advanceTimeline([], progress("matting_depth", 0.05, "matting and depth"));
    const current = progress("reconstruct", 0.42, "coarse reconstruction");
    t = advanceTimeline(t, current);
    render(<ProgressPanel job={current} timeline={t} />);
    expect(screen.getByTestId("job-state").textContent).toBe("Running");
    const bar = screen.getByRole("progressbar");
    expect(bar.getAttribute("aria-valuenow")).toBe("42");
    expect(screen.getByTestId("progress-now").textContent).toBe("Coarse reconstruction · 42% — coarse reconstruction");
    const steps = screen.getAllByRole("listitem");
    expect(steps.map((li) => li.getAttribute("data-stage"))).toEqual(["matting_depth", "reconstruct"]);
    expect(steps[0].className).toContain("step-done");
    expect(within(steps[0]).getByText("✓")).toBeTruthy();
    expect(steps[1].className).toContain("step-active");
    expect(within(steps[1]).getByText("Coarse reconstruction")).toBeTruthy();
  });

  it("shows the job's error and the connection note", () => {
    const failed = progress("reconstruct", 0.2, "", {
      state: "FAILED",
      done: true,
      error: { code: "DEADLINE_EXCEEDED", message: "reconstruction did not answer within 300 s" },
    });
    render(<ProgressPanel job={failed} timeline={advanceTimeline([], failed)} connection="Live progress interrupted; reconnecting" />);
    expect(screen.getByTestId("job-state").textContent).toBe("Failed");
    expect(screen.getByRole("alert").textContent).toBe("reconstruction did not answer within 300 s");
    expect(screen.getByText("Live progress interrupted; reconnecting")).toBeTruthy();
    expect(screen.getByTestId("progress-now").textContent).toBe("Idle");
  });

  it("offers Cancel only while work runs", () => {
    const onCancel = vi.fn();
    const { rerender } = render(<ProgressPanel job={job()} timeline={[]} onCancel={onCancel} />);
    screen.getByRole("button", { name: "Cancel" }).click();
    expect(onCancel).toHaveBeenCalledTimes(1);
    rerender(<ProgressPanel job={job({ state: "SUCCEEDED", done: true, versions: [initialVersion()] })} timeline={[]} onCancel={onCancel} />);
    expect(screen.queryByRole("button", { name: "Cancel" })).toBeNull();
  });

  it("counts queued rounds", () => {
    render(<ProgressPanel job={progress("enhance", 0.1, "rendering the view", { pending_rounds: 3 })} timeline={[]} />);
    expect(screen.getByTestId("progress-now").textContent).toBe("Enhancing the view · 10% — rendering the view (3 rounds queued)");
  });

  it("renders nothing without a job", () => {
    const { container } = render(<ProgressPanel job={null} timeline={[]} />);
    expect(container.innerHTML).toBe("");
  });
});
