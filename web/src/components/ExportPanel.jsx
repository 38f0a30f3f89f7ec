// Step 5: downloads of the version on screen, in the formats the gateway exports: .ply (3DGS, full
// spherical harmonics), .splat (compact web format), .glb (KHR_gaussian_splatting) and the compressed
// .spz (Niantic) and .sog (PlayCanvas).

const FORMATS = [
  ["ply", "3DGS point cloud, full quality"],
  ["splat", "compact, for web viewers"],
  ["glb", "glTF with KHR_gaussian_splatting"],
  ["spz", "compressed (Niantic), ~13x smaller than .ply"],
  ["sog", "compressed (PlayCanvas SOG), ~13x smaller than .ply"],
];

function baseName(job) {
  const raw = (job.display_name || job.id || "glimpse3d").trim();
  return raw.replace(/[^A-Za-z0-9._-]+/g, "_").replace(/^_+|_+$/g, "") || "glimpse3d";
}

/** @param {{job: object, version: object|null}} props */
export default function ExportPanel({ job, version }) {
  if (!job || !version) return null;
  const downloads = version.downloads ?? {};
  const name = baseName(job);
  return (
    <section className="panel export-panel" aria-label="Export">
      <h2>5 · Export v{version.number}</h2>
      <ul className="exports">
        {FORMATS.map(([format, description]) =>
          downloads[format] ? (
            <li key={format}>
              <a
                className="button"
                href={downloads[format]}
                download={`${name}-v${version.number}.${format}`}
                data-format={format}
              >
                .{format}
              </a>
              <span className="hint">{description}</span>
            </li>
          ) : null,
        )}
      </ul>
    </section>
  );
}
