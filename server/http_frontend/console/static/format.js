// Values as the console shows them: sizes, times, and record bodies as text, JSON or hex.

const UTF8 = new TextDecoder("utf-8");
const BODY_SHOWN_BYTES_MAX = 4096;

export function bytesText(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${unit ? value.toFixed(value < 10 ? 2 : 1) : value} ${units[unit]}`;
}

export function numberText(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return Number(n).toLocaleString("en-US", { maximumFractionDigits: digits });
}

/** A timestamp in milliseconds as ISO 8601 (UTC), or the number if it is not a plausible time. */
export function msText(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms <= 0 || ms > 8.64e15) return String(ms);
  return new Date(ms).toISOString();
}

export function agoText(iso) {
  if (!iso) return "never";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return `${seconds.toFixed(0)} s ago`;
  if (seconds < 3600) return `${(seconds / 60).toFixed(0)} min ago`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h ago`;
  return `${(seconds / 86400).toFixed(1)} d ago`;
}

export function fromBase64(text) {
  const binary = atob(text || "");
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

export function toBase64(bytes) {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}

export const utf8 = (bytes) => UTF8.decode(bytes);
export const encodeUtf8 = (text) => new TextEncoder().encode(text);

function hexDump(bytes) {
  const lines = [];
  for (let offset = 0; offset < bytes.length; offset += 16) {
    const row = bytes.subarray(offset, offset + 16);
    const hex = Array.from(row, (b) => b.toString(16).padStart(2, "0")).join(" ");
    const ascii = Array.from(row, (b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${offset.toString(16).padStart(8, "0")}  ${hex.padEnd(47)}  |${ascii}|`);
  }
  return lines.join("\n");
}

/**
 * A body as `mode` shows it ("text", "json" or "hex"): {text, note}. JSON that does not
 * parse is shown as text with a note; only the first 4 KiB are shown.
 */
export function bodyView(bytes, mode) {
  const shown = bytes.subarray(0, BODY_SHOWN_BYTES_MAX);
  const cut = bytes.length > shown.length ? `${bytes.length - shown.length} more bytes not shown` : null;
  if (mode === "hex") return { text: hexDump(shown), note: cut };
  const text = utf8(shown);
  if (mode === "json") {
    try {
      return { text: JSON.stringify(JSON.parse(utf8(bytes)), null, 2), note: null };
    } catch {
      return { text, note: cut || "not JSON" };
    }
  }
  return { text, note: cut };
}

/** A record's command (fence or trim) in words, or null for a data record. */
export function commandText(headers, body) {
  if (headers.length !== 1 || headers[0][0].length !== 0) return null;
  const op = utf8(headers[0][1]);
  if (op === "fence") return body.length ? `fence: token set (${utf8(body)})` : "fence: token cleared";
  if (op === "trim" && body.length === 8) {
    const point = new DataView(body.buffer, body.byteOffset, 8).getBigUint64(0);
    return `trim: records before ${point}`;
  }
  return `command ${op}`;
}
