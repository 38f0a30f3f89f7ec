import { act, render, screen } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";

import { createApi } from "../src/api.js";
import App from "../src/App.jsx";
import { splatKey } from "../src/components/Viewer.jsx";
import { initialVersion, job } from "./helpers.js";

vi.mock("../src/components/Viewer.jsx", async (importOriginal) => ({
  ...(await importOriginal()),
  default: function FakeViewer({ splatUrl }) {
    return <div data-testid="viewer" data-url={splatUrl ?? ""} />;
  },
}));

describe("signed links", () => {
  afterEach(() => {
    vi.useRealTimers();
    window.location.hash = "";
  });

  it("name the same splat whatever their signature", () => {
    const a = "/api/v1/jobs/j1/versions/2/download?format=splat&tenant=acme&sig=aaa.bbb.ccc";
    const b = "/api/v1/jobs/j1/versions/2/download?format=splat&tenant=acme&sig=ddd.eee.fff";
    expect(splatKey(a)).toBe("/api/v1/jobs/j1/versions/2/download?format=splat&tenant=acme");
    expect(splatKey(a)).toBe(splatKey(b));
    expect(splatKey("/api/v1/jobs/j1/versions/3/download?format=splat&sig=x")).not.toBe(splatKey(a));
    expect(splatKey("/api/v1/jobs/j1/photo?sig=x")).toBe("/api/v1/jobs/j1/photo");
    expect(splatKey(null)).toBe(null);
  });

  it("are renewed only by a client the gateway authenticates", () => {
    expect(createApi({ token: "t", fetch: async () => new Response("{}") }).signsLinks).toBe(true);
    expect(createApi({ token: "", fetch: async () => new Response("{}") }).signsLinks).toBe(false);
  });

  for (const signsLinks of [true, false]) {
    it(`${signsLinks ? "are" : "are not"} fetched again while a job is open when the gateway ${
      signsLinks ? "signs" : "does not sign"} them`, async () => {
      vi.useFakeTimers({ shouldAdvanceTime: true });
      let round = 0;
      const signed = (id) => {
        round += 1;
        return job({ id, state: "SUCCEEDED", done: true, revision: 7, versions: [initialVersion(id)],
          photo_url: `/api/v1/jobs/${id}/photo?sig=s${round}` });
      };
      const api = {
        signsLinks,
        listJobs: vi.fn(async () => ({ jobs: [] })),
        getJob: vi.fn(async (id) => signed(id)),
        watchJob: vi.fn(() => () => {}),
        photoUrl: (id) => `/api/v1/jobs/${id}/photo`,
        downloadUrl: (id, n, f) => `/api/v1/jobs/${id}/versions/${n}/download?format=${f}`,
      };
      window.location.hash = "#/jobs/j1";
      render(<App api={api} />);
      await screen.findByAltText("The uploaded photo");
      await act(async () => {
        await vi.advanceTimersByTimeAsync(100); // the job opened (once per hash change)
      });
      const opened = round;
      expect(screen.getByAltText("The uploaded photo").getAttribute("src")).toBe(`/api/v1/jobs/j1/photo?sig=s${opened}`);
      await act(async () => {
        await vi.advanceTimersByTimeAsync(5 * 60 * 1000);
      });
      expect(api.getJob).toHaveBeenCalledTimes(opened + (signsLinks ? 1 : 0));
      const now = screen.getByAltText("The uploaded photo").getAttribute("src");
      expect(now).toBe(`/api/v1/jobs/j1/photo?sig=s${opened + (signsLinks ? 1 : 0)}`);
    });
  }
});
