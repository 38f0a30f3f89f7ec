// Client-side checks of a photo before it is uploaded: the same limits the gateway enforces (PNG, JPEG
// or WebP, at most 32 MiB, options in range), so that most mistakes are explained before any upload. The
// gateway checks everything again; its 4xx message is shown when it disagrees.

export const MAX_PHOTO_BYTES = 32 * 1024 * 1024;
export const MAX_NOVEL_VIEWS = 16;
export const MAX_DISPLAY_NAME_CHARS = 200;
export const MAX_SEED = 2n ** 64n - 1n;

const ACCEPTED_TYPES = ["image/png", "image/jpeg", "image/webp"];
const ACCEPTED_EXTENSIONS = [".png", ".jpg", ".jpeg", ".webp"];
const PNG_MAGIC = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
const JPEG_MAGIC = [0xff, 0xd8, 0xff];
const RIFF_MAGIC = [0x52, 0x49, 0x46, 0x46]; // "RIFF", then the size, then "WEBP"
const WEBP_MAGIC = [0x57, 0x45, 0x42, 0x50];

/** "20.0 KiB" style sizes for messages. */
export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1024 * 1024)).toFixed(1)} MiB`;
}

function startsWith(bytes, magic, offset = 0) {
  return magic.every((b, i) => bytes[offset + i] === b);
}

/** "png", "jpeg", "webp" or null, from the first 12 bytes of a file. */
export function sniffImageType(bytes) {
  if (startsWith(bytes, PNG_MAGIC)) return "png";
  if (startsWith(bytes, JPEG_MAGIC)) return "jpeg";
  if (startsWith(bytes, RIFF_MAGIC) && startsWith(bytes, WEBP_MAGIC, 8)) return "webp";
  return null;
}

async function headBytes(file, n) {
  const blob = file.slice(0, n);
  const buffer = typeof blob.arrayBuffer === "function" ? await blob.arrayBuffer() : await new Response(blob).arrayBuffer();
  return new Uint8Array(buffer);
}

/**
 * Checks a File the user picked or dropped.
 * @returns {Promise<string|null>} a message saying what is wrong, or null when the photo can be sent
 */
export async function validatePhoto(file) {
  if (!file) return "Choose a photo first.";
  const name = file.name || "the file";
  const lower = name.toLowerCase();
  const typeOk = ACCEPTED_TYPES.includes(file.type) || ACCEPTED_EXTENSIONS.some((ext) => lower.endsWith(ext));
  if (!typeOk) {
    const what = file.type ? ` (${file.type})` : "";
    return `${name}${what} is not a PNG, JPEG or WebP photo.`;
  }
  if (file.size === 0) return `${name} is empty.`;
  if (file.size > MAX_PHOTO_BYTES) {
    const size = formatBytes(file.size);
    const limit = formatBytes(MAX_PHOTO_BYTES);
    // Just over the limit, rounded sizes would read the same: give the bytes then.
    if (size === limit) return `${name} is ${file.size} bytes; the limit is ${MAX_PHOTO_BYTES} bytes (${limit}).`;
    return `${name} is ${size}; the limit is ${limit}.`;
  }
  if (sniffImageType(await headBytes(file, 12)) === null) {
    return `${name} does not contain PNG, JPEG or WebP data.`;
  }
  return null;
}

/**
 * Checks the job options typed into the form.
 * @returns {{field: string, message: string}|null}
 */
export function validateOptions({ displayName = "", novelViews = 0, seed = "" }) {
  if (displayName.length > MAX_DISPLAY_NAME_CHARS) {
    return {
      field: "display_name",
      message: `The name has ${displayName.length} characters; the limit is ${MAX_DISPLAY_NAME_CHARS}.`,
    };
  }
  const views = Number(novelViews);
  if (!Number.isInteger(views) || views < 0 || views > MAX_NOVEL_VIEWS) {
    return { field: "novel_views", message: `Novel views must be a whole number from 0 to ${MAX_NOVEL_VIEWS}.` };
  }
  const text = String(seed).trim();
  if (text !== "" && (!/^[0-9]+$/.test(text) || BigInt(text) > MAX_SEED)) {
    return { field: "seed", message: "The seed must be a whole number from 0 to 2^64 - 1." };
  }
  return null;
}
