// Recent jobs from GET /jobs, each a link that opens it (#/jobs/{id}).

import { useEffect, useState } from "react";

import { formatTime, STATE_LABELS } from "../format.js";
import ErrorMessage from "./ErrorMessage.jsx";

/** @param {{api: object, refresh?: number}} props refresh: change it to list again */
export default function JobList({ api, refresh = 0 }) {
  const [jobs, setJobs] = useState([]);
  const [error, setError] = useState("");

  useEffect(() => {
    let live = true;
    api.listJobs().then(
      (page) => {
        if (live) setJobs(Array.isArray(page?.jobs) ? page.jobs : []);
      },
      (err) => {
        if (live) setError(err.message);
      },
    );
    return () => {
      live = false;
    };
  }, [api, refresh]);

  if (error) {
    return <ErrorMessage>Recent jobs are unavailable: {error}</ErrorMessage>;
  }
  if (jobs.length === 0) return null;
  return (
    <section className="panel jobs-panel" aria-label="Recent jobs">
      <h2>Recent jobs</h2>
      <ul className="jobs">
        {jobs.map((j) => (
          <li key={j.id}>
            <a href={`#/jobs/${j.id}`}>{j.display_name || j.id}</a>
            <span className="hint">
              {" "}
              {STATE_LABELS[j.state] ?? j.state} · {formatTime(j.create_time)}
            </span>
          </li>
        ))}
      </ul>
    </section>
  );
}
