// Client of the gateway's HTTP/JSON facade (base /api/v1). Every failure becomes an ApiError carrying the
// facade's error JSON ({"error": {"code", "message", "field"}}), so the UI can show the server's own
// message; a network failure or a non-JSON answer gets a message of its own.

export const API_BASE = "/api/v1";

export class ApiError extends Error {
  /**
   * @param {string} message what went wrong, fit to show to the user
   * @param {{status?: number, code?: string, field?: string}} details HTTP status (0: no answer),
   *   the facade's error code and the request field it names
   */
  constructor(message, { status = 0, code = "UNKNOWN", field = "" } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

const TOKEN_KEY = "glimpse3d.token";

/**
 * The access token for a gateway that requires authentication (docs/auth.md): a `#token=...` fragment
 * is taken once and removed from the address bar (so it stays out of history and bookmarks), then
 * kept in sessionStorage for this tab. "" when there is none (a loopback gateway without auth).
 */
export function takeToken(location = globalThis.location, storage = globalThis.sessionStorage,
  history = globalThis.history) {
  try {
    const match = /^#token=([^&]+)$/.exec(location?.hash || "");
    if (match) {
      const token = decodeURIComponent(match[1]);
      storage?.setItem(TOKEN_KEY, token);
      history?.replaceState(null, "", `${location.pathname}${location.search}`);
      return token;
    }
    return storage?.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

/** The ApiError for a non-2xx response: the facade's error JSON when there is one. */
export async function errorFromResponse(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const err = body && typeof body === "object" ? body.error : null;
  if (err && typeof err.message === "string" && err.message) {
    return new ApiError(err.message, {
      status: response.status,
      code: typeof err.code === "string" ? err.code : "UNKNOWN",
      field: typeof err.field === "string" ? err.field : "",
    });
  }
  const text = response.statusText ? ` ${response.statusText}` : "";
  return new ApiError(`The gateway answered HTTP ${response.status}${text}`, { status: response.status });
}

/** True when a Job needs no more watching: done, and no enhancement round waiting. */
export function isSettled(job) {
  return Boolean(job && job.done && !(job.pending_rounds > 0));
}

/**
 * Creates the client.
 * @param {{base?: string, fetch?: typeof fetch, EventSource?: typeof EventSource, token?: string}} options
 *   token: sent as `Authorization: Bearer` (default: takeToken()); job watches then use a short-lived ticket
 */
export function createApi({ base = API_BASE, fetch: fetchImpl, EventSource: EventSourceImpl, token } = {}) {
  const doFetch = fetchImpl ?? ((...args) => globalThis.fetch(...args));
  const ES = EventSourceImpl ?? globalThis.EventSource;
  const bearer = token ?? takeToken();
  const auth = bearer ? { Authorization: `Bearer ${bearer}` } : {};

  async function request(path, init = {}) {
    let response;
    try {
      const { headers = {}, ...rest } = init;
      response = await doFetch(`${base}${path}`, { ...rest, headers: { Accept: "application/json", ...headers, ...auth } });
    } catch (cause) {
      const why = cause && cause.message ? `: ${cause.message}` : "";
      throw new ApiError(`Cannot reach the Glimpse3D gateway${why}`, { code: "UNAVAILABLE" });
    }
    if (!response.ok) throw await errorFromResponse(response);
    if (response.status === 204) return null;
    try {
      return await response.json();
    } catch {
      throw new ApiError(`The gateway sent a response that is not JSON (HTTP ${response.status})`, {
        status: response.status,
        code: "INTERNAL",
      });
    }
  }

  function jobPath(id) {
    return `/jobs/${encodeURIComponent(id)}`;
  }

  function postJson(path, body) {
    return request(path, {
      method: "POST",
      headers: { Accept: "application/json", "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  }

  return {
    /** POST /jobs (multipart): the photo plus optional display_name, novel_views, seed and the
     * user's matte corrections (mattePoints: [[x, y, keep], ...], x and y fractions of the photo). */
    createJob(file, { displayName = "", novelViews = 0, seed = "", mattePoints = [] } = {}) {
      const form = new FormData();
      form.append("photo", file, file.name || "photo");
      if (displayName) form.append("display_name", displayName);
      if (novelViews) form.append("novel_views", String(novelViews));
      if (seed !== "" && seed !== null && seed !== undefined) form.append("seed", String(seed));
      if (mattePoints.length) form.append("matte_points", JSON.stringify(mattePoints));
      return request("/jobs", { method: "POST", body: form });
    },
    /** POST /matte (multipart): the matte a job would use for the photo with these corrections:
     * {mask (a data: URL, white = object), width, height, coverage, border_fraction, fragments, warning}. */
    previewMatte(file, mattePoints = []) {
      const form = new FormData();
      form.append("photo", file, file.name || "photo");
      if (mattePoints.length) form.append("matte_points", JSON.stringify(mattePoints));
      return request("/matte", { method: "POST", body: form });
    },
    listJobs() {
      return request("/jobs");
    },
    getJob(id) {
      return request(jobPath(id));
    },
    /** POST /jobs/{id}/photos (multipart): another photo of the object, with an optional hint of where it
     * was taken (azimuthDeg, elevationDeg in degrees; null: searched). It is posed and adds a version. */
    addPhoto(id, file, { azimuthDeg = null, elevationDeg = null } = {}) {
      const form = new FormData();
      form.append("photo", file, file.name || "photo");
      if (azimuthDeg !== null) form.append("azimuth_deg", String(azimuthDeg));
      if (azimuthDeg !== null && elevationDeg !== null) form.append("elevation_deg", String(elevationDeg));
      return request(`${jobPath(id)}/photos`, { method: "POST", body: form });
    },
    /** POST /jobs/{id}/enhance with {"camera": {...}} (see cameraPayload) or {"auto": true}. */
    enhance(id, body) {
      return postJson(`${jobPath(id)}/enhance`, body);
    },
    /** POST /jobs/{id}/versions/{n}/restore: a copy of version n becomes the latest; later rounds go on from it. */
    restore(id, number) {
      return postJson(`${jobPath(id)}/versions/${number}/restore`, {});
    },
    cancel(id) {
      return postJson(`${jobPath(id)}/cancel`, {});
    },
    /** Whether the gateway signs this client's photo and download links (it authenticates the client):
     * they then expire after minutes, and an open job is fetched again now and then to renew them. */
    signsLinks: Boolean(bearer),
    photoUrl(id) {
      return `${base}${jobPath(id)}/photo`;
    },
    downloadUrl(id, number, format) {
      return `${base}${jobPath(id)}/versions/${number}/download?format=${encodeURIComponent(format)}`;
    },
    /**
     * Follows GET /jobs/{id}/events: onJob(job) for every `job` event (the first is the current state).
     * The stream is closed here once the job is settled, since the server ends it then and an
     * EventSource would otherwise reconnect; watch again after an enhance. onError(message) is called
     * when the connection drops (the browser retries by itself) or is refused for good.
     * @returns {() => void} stops watching
     */
    watchJob(id, onJob, onError = () => {}) {
      if (!ES) {
        onError("This browser has no EventSource; progress is not live");
        return () => {};
      }
      const url = `${base}${jobPath(id)}/events`;
      if (!bearer) return follow(url, onJob, onError);
      // EventSource cannot send Authorization: ask for a one-minute ticket bound to this job instead.
      let stop = null;
      let cancelled = false;
      postJson(`${jobPath(id)}/events/ticket`, {}).then(
        (answer) => {
          if (!cancelled) stop = follow(`${url}?ticket=${encodeURIComponent(answer.ticket)}`, onJob, onError);
        },
        (error) => {
          if (!cancelled) onError(`Live progress is not available: ${error.message}`);
        },
      );
      return () => {
        cancelled = true;
        if (stop) stop();
      };
    },
  };

  /** One EventSource on url (see watchJob). */
  function follow(url, onJob, onError) {
    const source = new ES(url);
    let closed = false;
    let last = null;
    const close = () => {
      closed = true;
      source.close();
    };
    source.addEventListener("job", (event) => {
      let job;
      try {
        job = JSON.parse(event.data);
      } catch {
        onError("The gateway sent a progress event that is not JSON");
        return;
      }
      last = job;
      onJob(job);
      if (isSettled(job)) close();
    });
    // The facade's last block when it ends the stream: the job settled, or the gateway is stopping.
    source.addEventListener("end", () => {
      if (closed) return;
      close();
      if (!isSettled(last)) onError("Live progress ended before the job finished; reload the page to follow it");
    });
    source.onerror = () => {
      if (closed) return;
      if (source.readyState === 2) {
        closed = true;
        onError("Live progress stopped: the gateway closed the event stream");
      } else {
        onError("Live progress interrupted; reconnecting");
      }
    };
    return close;
  }
}
