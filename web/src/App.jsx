// The workspace: Upload → Generate (live progress) → Enhance → Versions → Export around one splat view.
// The open job lives in the URL (#/jobs/{id}), so a reload or a shared link opens the same job.

import { useCallback, useEffect, useRef, useState } from "react";

import { createApi } from "./api.js";
import AddPhotoPanel from "./components/AddPhotoPanel.jsx";
import EnhancePanel from "./components/EnhancePanel.jsx";
import ExportPanel from "./components/ExportPanel.jsx";
import JobList from "./components/JobList.jsx";
import ProgressPanel from "./components/ProgressPanel.jsx";
import UploadPanel from "./components/UploadPanel.jsx";
import VersionsPanel from "./components/VersionsPanel.jsx";
import Viewer from "./components/Viewer.jsx";
import { advanceTimeline, startsNewWork } from "./progress.js";
import ErrorMessage from "./components/ErrorMessage.jsx";

const defaultApi = createApi();
const LINK_REFRESH_MS = 5 * 60 * 1000;

function jobIdFromHash(hash) {
  const match = /^#\/jobs\/([A-Za-z0-9][A-Za-z0-9_-]{0,63})$/.exec(hash || "");
  return match ? match[1] : null;
}

// The viewer loads the version's .spz (Niantic's compressed format, read by Spark): about 8% of the .ply and,
// unlike .splat, with the higher SH bands (docs/formats.md).
function splatUrl(api, job, version) {
  if (!job || !version) return null;
  return version.downloads?.spz ?? api.downloadUrl(job.id, version.number, "spz");
}

/** @param {{api?: ReturnType<typeof createApi>}} props api: the facade client (tests pass a fake) */
export default function App({ api = defaultApi }) {
  const [job, setJob] = useState(null);
  const [timeline, setTimeline] = useState([]);
  const [connection, setConnection] = useState("");
  const [openError, setOpenError] = useState("");
  const [selected, setSelected] = useState(null); // a version number; null follows the latest
  const [compareWith, setCompareWith] = useState(null);
  const [jobsVersion, setJobsVersion] = useState(0);
  const jobRef = useRef(null);
  const viewerRef = useRef(null);
  const stopWatching = useRef(() => {});
  const openCount = useRef(0);

  const applyJob = useCallback((next) => {
    const previous = jobRef.current && jobRef.current.id === next.id ? jobRef.current : null;
    setTimeline((t) => advanceTimeline(startsNewWork(previous, next) ? [] : t, next));
    jobRef.current = next;
    setJob(next);
  }, []);

  const watch = useCallback(
    (id) => {
      stopWatching.current();
      stopWatching.current = api.watchJob(
        id,
        (next) => {
          setConnection("");
          applyJob(next);
        },
        setConnection,
      );
    },
    [api, applyJob],
  );

  const openJob = useCallback(
    async (id) => {
      const opening = ++openCount.current;
      stopWatching.current();
      setOpenError("");
      setSelected(null);
      setCompareWith(null);
      setTimeline([]);
      jobRef.current = null;
      if (!id) {
        setJob(null);
        return;
      }
      try {
        const opened = await api.getJob(id);
        if (opening !== openCount.current) return; // another job was opened meanwhile
        applyJob(opened);
        watch(id);
      } catch (err) {
        if (opening !== openCount.current) return;
        setJob(null);
        setOpenError(err.message);
      }
    },
    [api, applyJob, watch],
  );

  useEffect(() => {
    const onHash = () => openJob(jobIdFromHash(window.location.hash));
    onHash();
    window.addEventListener("hashchange", onHash);
    return () => {
      window.removeEventListener("hashchange", onHash);
      stopWatching.current();
    };
  }, [openJob]);

  // With authentication on, the photo and download links are signed for 10 to 15 minutes: while a job is
  // open, fetch it again every 5 minutes so that its links stay valid (the splat is not loaded again).
  const openId = job?.id ?? null;
  useEffect(() => {
    if (!openId || !api.signsLinks) return undefined;
    const timer = setInterval(() => {
      api.getJob(openId).then(
        (fresh) => {
          if (jobRef.current && jobRef.current.id === fresh.id && fresh.revision >= jobRef.current.revision) {
            applyJob(fresh);
          }
        },
        () => {}, // the event stream or the next refresh reports a gateway that went away
      );
    }, LINK_REFRESH_MS);
    return () => clearInterval(timer);
  }, [api, openId, applyJob]);

  const previewMatte = useCallback((file, points) => api.previewMatte(file, points), [api]);
  const canPreviewMatte = typeof api.previewMatte === "function";

  async function createJob(file, options) {
    const created = await api.createJob(file, options);
    setJobsVersion((n) => n + 1);
    window.location.hash = `#/jobs/${created.id}`;
  }

  async function enhance(body) {
    const next = await api.enhance(job.id, body);
    setSelected(null);
    setCompareWith(null);
    applyJob(next);
    watch(job.id);
  }

  async function addPhoto(file, hint) {
    const next = await api.addPhoto(job.id, file, hint);
    setSelected(null);
    setCompareWith(null);
    applyJob(next);
    watch(job.id);
  }

  async function restore(number) {
    const next = await api.restore(job.id, number);
    setSelected(null);
    setCompareWith(null);
    applyJob(next);
    watch(job.id);
  }

  async function cancel() {
    try {
      applyJob(await api.cancel(job.id));
    } catch (err) {
      setConnection(err.message);
    }
  }

  const versions = job?.versions ?? [];
  const shown = versions.find((v) => v.number === selected) ?? versions[versions.length - 1] ?? null;
  const compared = compareWith ? versions.find((v) => v.number === compareWith) ?? null : null;
  const canEnhance = Boolean(job && shown && job.state !== "FAILED" && job.state !== "CANCELLED");

  return (
    <div className="app">
      <header className="app-header">
        <h1>Glimpse3D</h1>
        <span className="tagline">one photo in, a Gaussian splat out, better with every click</span>
        {job ? (
          <a className="button" href="#/">
            New photo
          </a>
        ) : null}
      </header>
      <aside className="sidebar">
        {job ? (
          <section className="panel job-panel" aria-label="Job">
            <img className="job-photo" src={job.photo_url || api.photoUrl(job.id)} alt="The uploaded photo" />
            <div>
              <strong>{job.display_name || job.id}</strong>
              <div className="hint">{job.name}</div>
            </div>
          </section>
        ) : (
          <UploadPanel createJob={createJob} previewMatte={canPreviewMatte ? previewMatte : null} />
        )}
        <ErrorMessage>{openError}</ErrorMessage>
        <ProgressPanel job={job} timeline={timeline} connection={connection} onCancel={cancel} />
        {job ? (
          <EnhancePanel
            getView={() => viewerRef.current?.view() ?? null}
            enhance={enhance}
            disabled={!canEnhance}
            pendingRounds={job.pending_rounds}
          />
        ) : null}
        {job ? <AddPhotoPanel addPhoto={addPhoto} disabled={!canEnhance} /> : null}
        <VersionsPanel
          versions={versions}
          selected={shown?.number ?? null}
          compareWith={compared?.number ?? null}
          onSelect={(n) => {
            setSelected(n);
            if (n === compareWith) setCompareWith(null);
          }}
          onCompare={setCompareWith}
          onRestore={canEnhance ? restore : null}
        />
        <ExportPanel job={job} version={shown} />
        {job ? null : <JobList api={api} refresh={jobsVersion} />}
      </aside>
      <main className="stage">
        <Viewer
          splatUrl={splatUrl(api, job, shown)}
          version={shown?.number ?? null}
          compareUrl={splatUrl(api, job, compared)}
          compareVersion={compared?.number ?? null}
          onViewer={(v) => {
            viewerRef.current = v;
          }}
        />
      </main>
    </div>
  );
}
