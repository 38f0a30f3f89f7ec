// Step 1: a photo in. Drop it on the zone or pick it with the file dialog; it is checked here first
// (type, size, content) and then sent with the job options. Whatever goes wrong, the user reads why:
// the local check's message, or the gateway's own 4xx message.

import { useEffect, useId, useRef, useState } from "react";

import { formatBytes, MAX_NOVEL_VIEWS, validateOptions, validatePhoto } from "../upload.js";
import MatteEditor from "./MatteEditor.jsx";
import ErrorMessage from "./ErrorMessage.jsx";

/**
 * @param {{createJob: (file: File, options: object) => Promise<object>, disabled?: boolean,
 *          previewMatte?: (file: File, points: number[][]) => Promise<object>}} props
 *   createJob sends the photo; a rejection's message is shown. With previewMatte, the matte is shown
 *   before generating and the user's corrections (points) go with the job.
 */
export default function UploadPanel({ createJob, disabled = false, previewMatte = null }) {
  const [file, setFile] = useState(null);
  const [preview, setPreview] = useState("");
  const [error, setError] = useState("");
  const [hover, setHover] = useState(false);
  const [busy, setBusy] = useState(false);
  const [displayName, setDisplayName] = useState("");
  const [nameTyped, setNameTyped] = useState(false);
  const [novelViews, setNovelViews] = useState("0");
  const [seed, setSeed] = useState("");
  const [points, setPoints] = useState([]);
  const inputRef = useRef(null);
  const ids = useId();

  useEffect(() => {
    if (!file || typeof URL.createObjectURL !== "function") return undefined;
    const url = URL.createObjectURL(file);
    setPreview(url);
    return () => URL.revokeObjectURL(url);
  }, [file]);

  async function choose(files) {
    setError("");
    if (!files || files.length === 0) return;
    if (files.length > 1) {
      setError(`Drop one photo at a time (got ${files.length} files).`);
      return;
    }
    const candidate = files[0];
    const problem = await validatePhoto(candidate);
    if (problem) {
      setFile(null);
      setPreview("");
      setError(problem);
      return;
    }
    setFile(candidate);
    setPoints([]);
    if (!nameTyped) setDisplayName(candidate.name.replace(/\.[^.]+$/, ""));
  }

  async function submit(event) {
    event.preventDefault();
    if (!file) {
      setError("Choose a photo first.");
      return;
    }
    const options = { displayName: displayName.trim(), novelViews: Number(novelViews), seed: seed.trim() };
    if (points.length) options.mattePoints = points;
    const bad = validateOptions(options);
    if (bad) {
      setError(bad.message);
      return;
    }
    setBusy(true);
    setError("");
    try {
      await createJob(file, options);
    } catch (err) {
      setError(err && err.message ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  }

  const zoneClass = `dropzone${hover ? " dropzone-hover" : ""}${file ? " dropzone-has-file" : ""}`;
  return (
    <form className="panel upload-panel" onSubmit={submit} aria-label="Upload a photo" noValidate>
      <h2>1 · Photo</h2>
      <div
        className={zoneClass}
        data-testid="dropzone"
        role="button"
        tabIndex={0}
        aria-describedby={`${ids}-hint`}
        onClick={() => inputRef.current?.click()}
        onKeyDown={(e) => {
          if (e.key === "Enter" || e.key === " ") {
            e.preventDefault();
            inputRef.current?.click();
          }
        }}
        onDragEnter={(e) => {
          e.preventDefault();
          setHover(true);
        }}
        onDragOver={(e) => {
          e.preventDefault();
          if (e.dataTransfer) e.dataTransfer.dropEffect = "copy";
        }}
        onDragLeave={() => setHover(false)}
        onDrop={(e) => {
          e.preventDefault();
          setHover(false);
          choose(e.dataTransfer ? e.dataTransfer.files : null);
        }}
      >
        {file ? (
          <div className="dropzone-file">
            {preview ? <img src={preview} alt="Selected photo" /> : null}
            <span>
              {file.name} · {formatBytes(file.size)}
            </span>
          </div>
        ) : (
          <span id={`${ids}-hint`}>Drop a photo here, or click to choose one (PNG, JPEG or WebP, up to 32 MiB)</span>
        )}
      </div>
      {file && preview && previewMatte ? (
        <MatteEditor photoUrl={preview} file={file} points={points} onPoints={setPoints} previewMatte={previewMatte} />
      ) : null}
      <input
        ref={inputRef}
        type="file"
        accept="image/png,image/jpeg,image/webp,.png,.jpg,.jpeg,.webp"
        className="visually-hidden"
        data-testid="file-input"
        aria-label="Choose a photo"
        onChange={(e) => {
          choose(e.target.files);
          e.target.value = "";
        }}
      />
      <div className="fields">
        <label>
          Name
          <input
            value={displayName}
            onChange={(e) => {
              setDisplayName(e.target.value);
              setNameTyped(true);
            }}
            placeholder="my object"
          />
        </label>
        <label>
          Novel views
          <input
            type="number"
            min="0"
            max={MAX_NOVEL_VIEWS}
            step="1"
            value={novelViews}
            onChange={(e) => setNovelViews(e.target.value)}
          />
        </label>
        <label>
          Seed
          <input inputMode="numeric" value={seed} onChange={(e) => setSeed(e.target.value)} placeholder="0" />
        </label>
      </div>
      <ErrorMessage>{error}</ErrorMessage>
      <button type="submit" className="primary" disabled={disabled || busy || !file}>
        {busy ? "Uploading…" : "Generate 3D"}
      </button>
    </form>
  );
}
