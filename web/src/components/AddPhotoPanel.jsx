// Another photo of the same object (the back, a side): the gateway poses it against the splat and fuses it
// as a real view, which adds a version. The dial is the hint of where it was taken on the orbit (azimuth 0 =
// the first photo's side, 180 = behind); unticked, the whole orbit is searched. See docs/extra-photos.md.

import { useState } from "react";
import ErrorMessage from "./ErrorMessage.jsx";

/**
 * @param {{addPhoto: (file: File, hint: {azimuthDeg: number|null, elevationDeg: number|null}) => Promise<object>,
 *          disabled?: boolean}} props
 */
export default function AddPhotoPanel({ addPhoto, disabled = false }) {
  const [file, setFile] = useState(null);
  const [hinted, setHinted] = useState(true);
  const [azimuth, setAzimuth] = useState(180);
  const [elevation, setElevation] = useState(0);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState("");

  async function send() {
    setError("");
    setBusy(true);
    try {
      await addPhoto(file, hinted ? { azimuthDeg: azimuth, elevationDeg: elevation } : { azimuthDeg: null, elevationDeg: null });
      setFile(null);
    } catch (err) {
      setError(err && err.message ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  }

  return (
    <section className="panel add-photo-panel" aria-label="Add a photo">
      <h2>Add a photo</h2>
      <p className="hint">Another photo of the same object; it is placed around the model and fused as a version.</p>
      <input type="file" accept="image/png,image/jpeg,image/webp" aria-label="Extra photo"
             onChange={(e) => setFile(e.target.files?.[0] ?? null)} />
      <label>
        <input type="checkbox" checked={hinted} onChange={(e) => setHinted(e.target.checked)} />
        I know where it was taken
      </label>
      {hinted ? (
        <div className="hint-dial">
          <label>
            Azimuth {azimuth}°
            <input type="range" min="0" max="359" step="5" value={azimuth} aria-label="Azimuth"
                   onChange={(e) => setAzimuth(Number(e.target.value))} />
          </label>
          <label>
            Elevation {elevation}°
            <input type="range" min="-30" max="60" step="5" value={elevation} aria-label="Elevation"
                   onChange={(e) => setElevation(Number(e.target.value))} />
          </label>
        </div>
      ) : null}
      <div className="buttons">
        <button type="button" className="primary" disabled={disabled || busy || !file} onClick={send}>
          Add photo
        </button>
      </div>
      <ErrorMessage>{error}</ErrorMessage>
    </section>
  );
}
