/**
 * Checking and shrinking images before upload: refuse what the server would refuse (in its words),
 * and scale big photos down to the server's IMAGE_MAX_EDGE so uploads stay small.
 */

/** Thrown when a file cannot be attached; `message` is meant for the person. */
export class ImageRefused extends Error {
  constructor(message) {
    super(message);
    this.name = "ImageRefused";
  }
}

export const UNREADABLE = "The data is not an image this server can read; send PNG, JPEG, WebP or GIF.";

/** The server's 415 message for a format it refuses. */
export function unsupportedFormatMessage(format) {
  return `Image format ${format} is not supported; send PNG, JPEG, WebP or GIF.`;
}

/** Format names as the server (Pillow) calls them, by MIME type. */
const FORMAT_BY_TYPE = {
  "image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF",
  "image/bmp": "BMP", "image/x-ms-bmp": "BMP", "image/tiff": "TIFF", "image/x-icon": "ICO",
  "image/vnd.microsoft.icon": "ICO", "image/svg+xml": "SVG", "image/avif": "AVIF",
  "image/heic": "HEIC", "image/heif": "HEIF", "image/jxl": "JXL",
};

/** The format named by a file's first bytes, or "" if unknown. */
export function sniffFormat(bytes) {
  const b = bytes;
  const ascii = (start, end) => String.fromCharCode(...b.slice(start, end));
  if (b.length >= 8 && b[0] === 0x89 && ascii(1, 4) === "PNG") return "PNG";
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return "JPEG";
  if (b.length >= 6 && (ascii(0, 6) === "GIF87a" || ascii(0, 6) === "GIF89a")) return "GIF";
  if (b.length >= 12 && ascii(0, 4) === "RIFF" && ascii(8, 12) === "WEBP") return "WEBP";
  if (b.length >= 2 && ascii(0, 2) === "BM") return "BMP";
  if (b.length >= 4 && (ascii(0, 4) === "II*\0" || ascii(0, 4) === "MM\0*")) return "TIFF";
  if (b.length >= 4 && b[0] === 0 && b[1] === 0 && b[2] === 1 && b[3] === 0) return "ICO";
  if (b.length >= 12 && ascii(4, 8) === "ftyp") {
    const brand = ascii(8, 12);
    if (brand.startsWith("avi")) return "AVIF";
    if (["heic", "heix", "mif1", "msf1", "hevc"].includes(brand)) return "HEIC";
  }
  return "";
}

const TYPE_BY_FORMAT = { PNG: "image/png", JPEG: "image/jpeg", WEBP: "image/webp", GIF: "image/gif" };

/** A format name from a file name's extension, for files the browser gave no type. */
function formatFromName(name) {
  const ext = (name.split(".").pop() || "").toLowerCase();
  return ext && ext !== name.toLowerCase() ? ext.toUpperCase() : "unknown";
}

function readAsDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

function canvasToBlob(canvas, type, quality) {
  return new Promise((resolve) => canvas.toBlob(resolve, type, quality));
}

/** Whether any pixel of the canvas is not fully opaque. */
function hasTransparency(context, width, height) {
  const { data } = context.getImageData(0, 0, width, height);
  for (let i = 3; i < data.length; i += 4) if (data[i] < 255) return true;
  return false;
}

/**
 * Check one file and make it ready to send.
 * @param {File} file
 * @param {{imageMaxEdge: number, maxImageBytes: number}} limits
 * @param {string[]} acceptedTypes  MIME types the server accepts
 * @returns {Promise<{name: string, dataUrl: string, width: number, height: number,
 *   originalWidth: number, originalHeight: number, resized: boolean, bytes: number}>}
 */
export async function prepareImage(file, limits, acceptedTypes) {
  const declared = (file.type || "").toLowerCase();
  if (declared && !acceptedTypes.includes(declared)) {
    const format = FORMAT_BY_TYPE[declared] || (declared.startsWith("image/") ? declared.slice(6).toUpperCase() : "");
    throw new ImageRefused(format ? unsupportedFormatMessage(format) : UNREADABLE);
  }
  const head = new Uint8Array(await file.slice(0, 16).arrayBuffer());
  const sniffed = sniffFormat(head);
  if (sniffed && !TYPE_BY_FORMAT[sniffed]) throw new ImageRefused(unsupportedFormatMessage(sniffed));
  if (!sniffed) {
    throw new ImageRefused(declared ? UNREADABLE : unsupportedFormatMessage(formatFromName(file.name)));
  }
  const type = TYPE_BY_FORMAT[sniffed];

  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch {
    throw new ImageRefused("The image could not be decoded (it may be truncated or corrupt).");
  }
  const { width, height } = bitmap;
  const longest = Math.max(width, height);
  const tooWide = longest > limits.imageMaxEdge;
  try {
    if (!tooWide && file.size <= limits.maxImageBytes) {
      return {
        name: file.name || "pasted image", dataUrl: await readAsDataUrl(new Blob([file], { type })),
        width, height, originalWidth: width, originalHeight: height, resized: false, bytes: file.size,
      };
    }
    const scale = tooWide ? limits.imageMaxEdge / longest : 1;
    const w = Math.max(1, Math.round(width * scale));
    const h = Math.max(1, Math.round(height * scale));
    const canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.imageSmoothingEnabled = true;
    context.imageSmoothingQuality = "high";
    context.drawImage(bitmap, 0, 0, w, h);
    let blob = null;
    if (type === "image/png" && hasTransparency(context, w, h)) {
      blob = await canvasToBlob(canvas, "image/png");
    }
    if (!blob || blob.size > limits.maxImageBytes) {
      // JPEG has no alpha: flatten on white, as the server would.
      context.globalCompositeOperation = "destination-over";
      context.fillStyle = "#fff";
      context.fillRect(0, 0, w, h);
      blob = await canvasToBlob(canvas, "image/jpeg", 0.9);
    }
    if (!blob) throw new ImageRefused("The image could not be prepared for upload.");
    if (blob.size > limits.maxImageBytes) {
      throw new ImageRefused(`An image may be at most ${limits.maxImageBytes.toLocaleString("en")} bytes.`);
    }
    return {
      name: file.name || "pasted image", dataUrl: await readAsDataUrl(blob),
      width: w, height: h, originalWidth: width, originalHeight: height, resized: tooWide, bytes: blob.size,
    };
  } finally {
    bitmap.close();
  }
}
