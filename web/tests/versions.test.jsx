import { fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import { describe, expect, it, vi } from "vitest";

import ExportPanel from "../src/components/ExportPanel.jsx";
import VersionsPanel from "../src/components/VersionsPanel.jsx";
import { errorChange, metricRows } from "../src/format.js";
import { enhanceVersion, initialVersion, job } from "./helpers.js";

function metricsShown() {
  const out = {};
  for (const row of within(screen.getByTestId("metrics")).getAllByRole("definition")) {
    out[row.parentElement.getAttribute("data-metric")] = row.textContent;
  }
  return out;
}

describe("metric formats", () => {
  it("labels and formats the round report", () => {
    const rows = metricRows(enhanceVersion().metrics);
    expect(rows.map((r) => [r.label, r.value])).toEqual([
      ["Accepted pixels", "83.3%"],
      ["Fit to enhanced view, before", "0.0200"],
      ["Fit to enhanced view, after", "0.0120"],
      ["Mean confidence", "0.500"],
      ["Fusion steps", "60"],
      ["Input view PSNR vs photo", "27.0 dB"],
      ["Input view PSNR change", "-0.30 dB"],
      ["Input view SSIM vs photo", "0.912"],
      ["Time", "8.5 s"],
    ]);
  });

  it("labels a photo round's re-lift and pose", () => {
    const rows = metricRows({ relift_replaced: 3357, relift_added: 3152, pose_hint_kept: 1 });
    expect(rows.map((r) => [r.label, r.value])).toEqual([
      ["Guessed Gaussians the photo replaced", "3,357"],
      ["Gaussians lifted from the photo", "3,152"],
      ["Pose: your hint kept (a side no photo had shown)", "yes"],
    ]);
    expect(metricRows({ pose_hint_kept: 0 })[0].value).toBe("no");
  });

  it("labels the matte check", () => {
    const rows = metricRows({ matte_border_fraction: 0.125, matte_fragments: 2, matte_implausible: 1 });
    expect(rows.map((r) => [r.label, r.value])).toEqual([
      ["Photo border covered by the matte", "12.5%"],
      ["Matte pieces", "2"],
      ["Matte looks wrong", "yes"],
    ]);
  });

  it("shows a missing value as a dash and keeps unknown metrics", () => {
    const rows = metricRows({ zeta_score: 0.5, accepted_fraction: null });
    expect(rows).toEqual([
      { name: "accepted_fraction", label: "Accepted pixels", value: "–" },
      { name: "zeta_score", label: "zeta score", value: "0.500" },
    ]);
  });

  it("gives the error change of a round", () => {
    expect(errorChange({ enhanced_view_error_before: 0.02, enhanced_view_error_after: 0.012 })).toBe("-40.0%");
    expect(errorChange({ enhanced_view_error_before: 0.01, enhanced_view_error_after: 0.015 })).toBe("+50.0%");
    expect(errorChange({ enhanced_view_error_before: 0, enhanced_view_error_after: 0.015 })).toBeNull();
    expect(errorChange({})).toBeNull();
  });
});

describe("VersionsPanel", () => {
  const versions = [initialVersion(), enhanceVersion()];

  it("lists versions newest first with each round's report", () => {
    render(<VersionsPanel versions={versions} selected={2} compareWith={null} onSelect={() => {}} onCompare={() => {}} />);
    const buttons = within(screen.getByTestId("versions")).getAllByRole("button");
    expect(buttons.map((b) => b.getAttribute("data-version"))).toEqual(["2", "1"]);
    expect(buttons[0].textContent).toContain("v2 · enhanced from v1");
    expect(buttons[0].textContent).toContain("accepted 83.3% · fit to the enhanced view 0.0200 → 0.0120 (-40.0%)");
    expect(buttons[0].textContent).toContain("input view vs photo 27.0 dB (-0.30 dB) · SSIM 0.912");
    expect(buttons[0].getAttribute("aria-pressed")).toBe("true");
    expect(buttons[1].textContent).toContain("v1 · initial");
    expect(buttons[1].textContent).toContain("input view vs photo 27.3 dB · 12,000 Gaussians");
    expect(metricsShown()).toMatchObject({
      accepted_fraction: "83.3%",
      enhanced_view_error_before: "0.0200",
      enhanced_view_error_after: "0.0120",
    });
  });

  it("shows the metrics of the version picked and reports picks", () => {
    const onSelect = vi.fn();
    const onCompare = vi.fn();
    render(<VersionsPanel versions={versions} selected={1} compareWith={null} onSelect={onSelect} onCompare={onCompare} />);
    expect(screen.getByText("v1 metrics")).toBeTruthy();
    expect(metricsShown()).toEqual({
      input_view_psnr_db: "27.3 dB",
      num_gaussians: "12,000",
      num_views: "0",
      seconds: "3.2 s",
    });
    fireEvent.click(screen.getByRole("button", { name: /v2 · enhanced/ }));
    expect(onSelect).toHaveBeenCalledWith(2);
    const select = screen.getByLabelText("Compare v1 with");
    expect(within(select).getAllByRole("option").map((o) => o.textContent)).toEqual(["(no comparison)", "v2"]);
    fireEvent.change(select, { target: { value: "2" } });
    expect(onCompare).toHaveBeenCalledWith(2);
    fireEvent.change(select, { target: { value: "" } });
    expect(onCompare).toHaveBeenLastCalledWith(null);
  });

  it("says when a round was rejected", () => {
    const rejected = { ...enhanceVersion(), report: { rejected: true, clip_note: "CLIP similarity 0.41 below 0.8" } };
    render(<VersionsPanel versions={[initialVersion(), rejected]} selected={2} compareWith={null} onSelect={() => {}} onCompare={() => {}} />);
    expect(screen.getByRole("button", { name: /v2/ }).textContent).toContain("rejected · accepted 83.3%");
    expect(screen.getByText("CLIP similarity 0.41 below 0.8")).toBeTruthy();
  });

  it("goes on from an earlier version, and labels a restored one", async () => {
    const restoredVersion = {
      ...initialVersion(),
      number: 3,
      parent: 1,
      kind: "restore",
      metrics: { input_view_psnr_db: 27.25, restored_from: 1 },
    };
    const all = [initialVersion(), enhanceVersion(), restoredVersion];
    const onRestore = vi.fn().mockRejectedValueOnce(new Error("version jobs/j1/versions/1 not found")).mockResolvedValue();
    const { rerender } = render(
      <VersionsPanel versions={all} selected={3} compareWith={null} onSelect={() => {}} onCompare={() => {}} onRestore={onRestore} />,
    );
    expect(screen.getByRole("button", { name: /^v3/ }).textContent).toContain("v3 · restored from v1");
    expect(metricsShown()).toMatchObject({ restored_from: "v1" });
    expect(screen.queryByRole("button", { name: /Go on from/ })).toBeNull(); // the latest: nothing to go back to
    rerender(
      <VersionsPanel versions={all} selected={2} compareWith={null} onSelect={() => {}} onCompare={() => {}} onRestore={onRestore} />,
    );
    fireEvent.click(screen.getByRole("button", { name: "Go on from v2" }));
    expect(onRestore).toHaveBeenCalledWith(2);
    expect((await screen.findByRole("alert")).textContent).toBe("version jobs/j1/versions/1 not found");
    fireEvent.click(screen.getByRole("button", { name: "Go on from v2" }));
    await waitFor(() => expect(screen.queryByRole("alert")).toBeNull());
    expect(onRestore).toHaveBeenCalledTimes(2);
    rerender(<VersionsPanel versions={all} selected={2} compareWith={null} onSelect={() => {}} onCompare={() => {}} />);
    expect(screen.queryByRole("button", { name: /Go on from/ })).toBeNull(); // no rounds can start
  });

  it("has no comparison with a single version, and nothing at all without versions", () => {
    const { rerender, container } = render(
      <VersionsPanel versions={[initialVersion()]} selected={null} compareWith={null} onSelect={() => {}} onCompare={() => {}} />,
    );
    expect(screen.queryByRole("combobox")).toBeNull();
    rerender(<VersionsPanel versions={[]} selected={null} compareWith={null} onSelect={() => {}} onCompare={() => {}} />);
    expect(container.innerHTML).toBe("");
  });
});

describe("ExportPanel", () => {
  it("links every download of the version with file names", () => {
    render(<ExportPanel job={job({ display_name: "red chair!" })} version={enhanceVersion()} />);
    const links = screen.getAllByRole("link");
    expect(links.map((a) => [a.textContent, a.getAttribute("href"), a.getAttribute("download")])).toEqual([
      [".ply", "/api/v1/jobs/j1/versions/2/download?format=ply", "red_chair-v2.ply"],
      [".splat", "/api/v1/jobs/j1/versions/2/download?format=splat", "red_chair-v2.splat"],
      [".glb", "/api/v1/jobs/j1/versions/2/download?format=glb", "red_chair-v2.glb"],
      [".spz", "/api/v1/jobs/j1/versions/2/download?format=spz", "red_chair-v2.spz"],
      [".sog", "/api/v1/jobs/j1/versions/2/download?format=sog", "red_chair-v2.sog"],
    ]);
  });
});
