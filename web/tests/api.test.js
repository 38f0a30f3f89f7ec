import { beforeEach, describe, expect, it, vi } from "vitest";

import { ApiError, createApi, errorFromResponse, isSettled, takeToken } from "../src/api.js";
import { enhanceVersion, FakeEventSource, initialVersion, job, pngFile } from "./helpers.js";

function jsonResponse(status, body, statusText = "") {
  return new Response(JSON.stringify(body), { status, statusText, headers: { "Content-Type": "application/json" } });
}

describe("errorFromResponse", () => {
  it("carries the facade's error JSON", async () => {
    const response = jsonResponse(400, {
      error: { code: "INVALID_ARGUMENT", message: "photo is 12 bytes; not a PNG or JPEG image", field: "photo" },
    });
    const err = await errorFromResponse(response);
    expect(err).toBeInstanceOf(ApiError);
    expect(err.message).toBe("photo is 12 bytes; not a PNG or JPEG image");
    expect(err.status).toBe(400);
    expect(err.code).toBe("INVALID_ARGUMENT");
    expect(err.field).toBe("photo");
  });

  it("explains an answer that is not the error JSON", async () => {
    const err = await errorFromResponse(new Response("<html>bad gateway</html>", { status: 502, statusText: "Bad Gateway" }));
    expect(err.message).toBe("The gateway answered HTTP 502 Bad Gateway");
    expect(err.status).toBe(502);
    expect(err.code).toBe("UNKNOWN");
  });
});

describe("createApi", () => {
  it("turns a 4xx answer into an ApiError with the server's message", async () => {
    const fetch = vi.fn(async () => jsonResponse(404, { error: { code: "NOT_FOUND", message: "job nope not found" } }));
    const api = createApi({ fetch });
    await expect(api.getJob("nope")).rejects.toMatchObject({
      name: "ApiError",
      message: "job nope not found",
      status: 404,
      code: "NOT_FOUND",
    });
    expect(fetch).toHaveBeenCalledWith("/api/v1/jobs/nope", expect.any(Object));
  });

  it("reports an unreachable gateway", async () => {
    const api = createApi({ fetch: vi.fn(async () => Promise.reject(new TypeError("Failed to fetch"))) });
    const err = await api.listJobs().catch((e) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err.code).toBe("UNAVAILABLE");
    expect(err.message).toBe("Cannot reach the Glimpse3D gateway: Failed to fetch");
  });

  it("reports a 2xx answer that is not JSON", async () => {
    const api = createApi({ fetch: vi.fn(async () => new Response("oops", { status: 200 })) });
    await expect(api.getJob("j1")).rejects.toThrow("The gateway sent a response that is not JSON (HTTP 200)");
  });

  it("uploads the photo and the options as multipart form data", async () => {
    const fetch = vi.fn(async () => jsonResponse(201, job()));
    const api = createApi({ fetch });
    const photo = pngFile();
    const created = await api.createJob(photo, { displayName: "chair", novelViews: 2, seed: "7" });
    expect(created.id).toBe("j1");
    const [url, init] = fetch.mock.calls[0];
    expect(url).toBe("/api/v1/jobs");
    expect(init.method).toBe("POST");
    expect(init.body).toBeInstanceOf(FormData);
    expect(init.body.get("photo").name).toBe("sample.png");
    expect(init.body.get("display_name")).toBe("chair");
    expect(init.body.get("novel_views")).toBe("2");
    expect(init.body.get("seed")).toBe("7");
  });

  it("sends the matte corrections with the job and asks for a matte preview", async () => {
    const fetch = vi.fn(async () => jsonResponse(201, job()));
    const api = createApi({ fetch });
    await api.createJob(pngFile(), { mattePoints: [[0.5, 0.25, true], [0.9, 0.1, false]] });
    expect(fetch.mock.calls[0][1].body.get("matte_points")).toBe("[[0.5,0.25,true],[0.9,0.1,false]]");
    fetch.mockImplementationOnce(async () => jsonResponse(200, { mask: "data:image/png;base64,AA", coverage: 0.3 }));
    const preview = await api.previewMatte(pngFile(), [[0.5, 0.5, false]]);
    expect(preview.coverage).toBe(0.3);
    const [url, init] = fetch.mock.calls[1];
    expect(url).toBe("/api/v1/matte");
    expect(init.method).toBe("POST");
    expect(init.body.get("matte_points")).toBe("[[0.5,0.5,false]]");
    expect(init.body.get("photo").name).toBe("sample.png");
  });

  it("leaves unset options out of the upload", async () => {
    const fetch = vi.fn(async () => jsonResponse(201, job()));
    await createApi({ fetch }).createJob(pngFile(), {});
    const form = fetch.mock.calls[0][1].body;
    expect([...form.keys()]).toEqual(["photo"]);
  });

  it("posts the enhance body as JSON", async () => {
    const fetch = vi.fn(async () => jsonResponse(202, job({ pending_rounds: 1 })));
    const api = createApi({ fetch });
    const answer = await api.enhance("j1", { auto: true });
    expect(answer.pending_rounds).toBe(1);
    const [url, init] = fetch.mock.calls[0];
    expect(url).toBe("/api/v1/jobs/j1/enhance");
    expect(init.method).toBe("POST");
    expect(init.headers["Content-Type"]).toBe("application/json");
    expect(JSON.parse(init.body)).toEqual({ auto: true });
  });

  it("posts a restore of a version", async () => {
    const fetch = vi.fn(async () => jsonResponse(202, job({ pending_rounds: 1 })));
    await createApi({ fetch }).restore("j1", 2);
    const [url, init] = fetch.mock.calls[0];
    expect(url).toBe("/api/v1/jobs/j1/versions/2/restore");
    expect(init.method).toBe("POST");
  });

  it("builds download and photo URLs", () => {
    const api = createApi({ fetch: vi.fn() });
    expect(api.downloadUrl("j1", 3, "ply")).toBe("/api/v1/jobs/j1/versions/3/download?format=ply");
    expect(api.photoUrl("j1")).toBe("/api/v1/jobs/j1/photo");
  });
});

describe("watchJob", () => {
  beforeEach(() => {
    FakeEventSource.instances = [];
  });

  function watch() {
    const api = createApi({ fetch: vi.fn(), EventSource: FakeEventSource });
    const jobs = [];
    const errors = [];
    const stop = api.watchJob("j1", (j) => jobs.push(j), (m) => errors.push(m));
    return { source: FakeEventSource.instances[0], jobs, errors, stop };
  }

  it("follows job events and closes the stream once the job is settled", () => {
    const { source, jobs, errors } = watch();
    expect(source.url).toBe("/api/v1/jobs/j1/events");
    source.emit("job", job());
    expect(source.closed).toBeUndefined();
    const finished = job({ state: "SUCCEEDED", done: true, versions: [initialVersion()] });
    source.emit("job", finished);
    expect(jobs).toEqual([job(), finished]);
    expect(source.closed).toBe(true);
    expect(errors).toEqual([]);
  });

  it("keeps the stream open while an enhancement round is pending", () => {
    const { source } = watch();
    source.emit("job", job({ state: "SUCCEEDED", done: true, pending_rounds: 1, versions: [initialVersion()] }));
    expect(source.closed).toBeUndefined();
    source.emit("job", job({ state: "SUCCEEDED", done: true, versions: [initialVersion(), enhanceVersion()] }));
    expect(source.closed).toBe(true);
  });

  it("says so when the stream ends before the job is done", () => {
    const { source, errors } = watch();
    source.emit("job", job());
    source.emit("end", {});
    expect(source.closed).toBe(true);
    expect(errors).toEqual(["Live progress ended before the job finished; reload the page to follow it"]);
  });

  it("reports a dropped connection and a refused one", () => {
    const { source, errors } = watch();
    source.fail(0);
    source.fail(2);
    expect(errors).toEqual([
      "Live progress interrupted; reconnecting",
      "Live progress stopped: the gateway closed the event stream",
    ]);
  });

  it("reports an event that is not JSON", () => {
    const { source, jobs, errors } = watch();
    source.emit("job", "{not json");
    expect(jobs).toEqual([]);
    expect(errors).toEqual(["The gateway sent a progress event that is not JSON"]);
  });

  it("stops when asked", () => {
    const { source, stop } = watch();
    stop();
    expect(source.closed).toBe(true);
  });
});

describe("isSettled", () => {
  it("needs done and no pending round", () => {
    expect(isSettled(job())).toBe(false);
    expect(isSettled(job({ done: true, state: "SUCCEEDED" }))).toBe(true);
    expect(isSettled(job({ done: true, state: "SUCCEEDED", pending_rounds: 2 }))).toBe(false);
    expect(isSettled(null)).toBe(false);
  });
});

describe("authentication", () => {
  beforeEach(() => {
    FakeEventSource.instances = [];
  });

  it("sends the token as a bearer header on every request", async () => {
    const fetch = vi.fn(async () => jsonResponse(200, { jobs: [], next_page_token: "" }));
    const api = createApi({ fetch, EventSource: FakeEventSource, token: "tok-1" });
    await api.listJobs();
    await api.cancel("j1");
    for (const [, init] of fetch.mock.calls) expect(init.headers.Authorization).toBe("Bearer tok-1");
    expect(fetch.mock.calls[1][1].headers["Content-Type"]).toBe("application/json");
  });

  it("watches through a ticket instead of putting the token in the URL", async () => {
    const fetch = vi.fn(async () => jsonResponse(200, { ticket: "t k", expires_in_s: 60, events_url: "x" }));
    const api = createApi({ fetch, EventSource: FakeEventSource, token: "tok-1" });
    const jobs = [];
    api.watchJob("j1", (j) => jobs.push(j));
    await vi.waitFor(() => expect(FakeEventSource.instances).toHaveLength(1));
    expect(fetch.mock.calls[0][0]).toBe("/api/v1/jobs/j1/events/ticket");
    expect(fetch.mock.calls[0][1].method).toBe("POST");
    const source = FakeEventSource.instances[0];
    expect(source.url).toBe("/api/v1/jobs/j1/events?ticket=t%20k");
    expect(source.url).not.toContain("tok-1");
    source.emit("job", job());
    expect(jobs).toEqual([job()]);
  });

  it("reports a refused ticket and opens no stream", async () => {
    const fetch = vi.fn(async () =>
      jsonResponse(401, { error: { code: "UNAUTHENTICATED", message: "the bearer token has expired" } }));
    const api = createApi({ fetch, EventSource: FakeEventSource, token: "old" });
    const errors = [];
    api.watchJob("j1", () => {}, (m) => errors.push(m));
    await vi.waitFor(() => expect(errors).toHaveLength(1));
    expect(errors[0]).toContain("the bearer token has expired");
    expect(FakeEventSource.instances).toHaveLength(0);
  });

  it("takes the token from #token= once and keeps it for the tab", () => {
    const store = new Map();
    const storage = { setItem: (k, v) => store.set(k, v), getItem: (k) => store.get(k) ?? null };
    const replaced = [];
    const history = { replaceState: (_s, _t, url) => replaced.push(url) };
    const location = { hash: "#token=abc%2Edef", pathname: "/", search: "" };
    expect(takeToken(location, storage, history)).toBe("abc.def");
    expect(replaced).toEqual(["/"]);
    expect(takeToken({ hash: "#/jobs/j1", pathname: "/", search: "" }, storage, history)).toBe("abc.def");
    expect(takeToken({ hash: "", pathname: "/", search: "" }, { getItem: () => null }, history)).toBe("");
  });
});
