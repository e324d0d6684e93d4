// The public API of this server, as the console calls it: the same requests a client with
// the same token could make with curl, so the console can never do more than the token.
// The token lives only in this tab's sessionStorage and travels only in the
// `authorization` header, never in a URL and never in a cookie (so no CSRF is possible).

const TOKEN_KEY = "s2s-console-token";

export class ApiError extends Error {
  constructor(status, code, message, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** Called with the error when the server says the token is missing, wrong or revoked. */
let onUnauthenticated = () => {};
export function whenUnauthenticated(handler) {
  onUnauthenticated = handler;
}

function headersFor({ basin, headers, json }) {
  const all = new Headers(headers || {});
  const secret = token();
  if (secret) all.set("authorization", `Bearer ${secret}`);
  if (basin) all.set("s2-basin", basin);
  if (json !== undefined) all.set("content-type", "application/json");
  return all;
}

async function failure(response) {
  const text = await response.text();
  let body = null;
  try { body = JSON.parse(text); } catch { body = null; }
  let code = `http_${response.status}`;
  let message = text || response.statusText;
  if (body && typeof body === "object") {
    if (typeof body.code === "string") code = body.code;
    if (typeof body.message === "string") message = body.message;
    if ("seq_num_mismatch" in body) {
      code = "seq_num_mismatch"; message = `the stream's next sequence number is ${body.seq_num_mismatch}`;
    } else if ("fencing_token_mismatch" in body) {
      code = "fencing_token_mismatch"; message = "the fencing token does not match the stream's";
    } else if ("tail" in body && response.status === 416) {
      code = "range_not_satisfiable"; message = `nothing to read there: the tail is ${body.tail.seq_num}`;
    } else if (Array.isArray(body.errors) && body.errors.length) {
      code = body.errors[0].code; message = body.errors[0].message;
    }
  }
  const error = new ApiError(response.status, code, message, body);
  if (response.status === 401) onUnauthenticated(error);
  return error;
}

/**
 * One API call. `json` is sent as the body; the answer is parsed as JSON unless `raw`
 * (then the Response itself is returned). Failures throw an ApiError with the S2 code.
 */
export async function call(method, path, options = {}) {
  const { json, raw, signal } = options;
  const response = await fetch(path, {
    method,
    headers: headersFor(options),
    body: json === undefined ? undefined : JSON.stringify(json),
    signal,
    credentials: "omit",
    cache: "no-store",
  });
  if (!response.ok) throw await failure(response);
  if (raw) return response;
  if (response.status === 204 || response.status === 202) return null;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path, options) => call("GET", path, options);

/** A path segment for a stream name or a token id, which may hold `/`. */
export const seg = (name) => encodeURIComponent(name);

export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/**
 * Split an SSE text stream into events ({event, id, data}); `feed` takes text as it comes
 * and returns the events it completed. Only what this server sends is handled: `event`,
 * `id` and `data` lines, `:` comments, blank lines ending an event.
 */
export class SseParser {
  constructor() {
    this.buffer = "";
    this.current = { event: "message", id: null, data: [] };
  }

  feed(text) {
    this.buffer += text;
    const events = [];
    let newline;
    while ((newline = this.buffer.search(/\r\n|\n|\r/)) >= 0) {
      const line = this.buffer.slice(0, newline);
      const width = this.buffer.startsWith("\r\n", newline) ? 2 : 1;
      this.buffer = this.buffer.slice(newline + width);
      if (line === "") {
        if (this.current.data.length) {
          events.push({ ...this.current, data: this.current.data.join("\n") });
        }
        this.current = { event: "message", id: null, data: [] };
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const name = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (name === "data") this.current.data.push(value);
      else if (name === "event") this.current.event = value;
      else if (name === "id") this.current.id = value;
    }
    return events;
  }
}

/**
 * Follow a stream's records over SSE (`accept: text/event-stream`) with fetch, not
 * EventSource: EventSource cannot send the `authorization` header, and the token must never
 * go into the URL. Calls `onEvent(event)` per event until `signal` aborts or the server ends.
 * `headers`: more request headers (an encrypted stream's key).
 */
export async function followRecords(basin, stream, params, onEvent, signal, headers = {}) {
  const response = await call("GET", `/v1/streams/${seg(stream)}/records${query(params)}`, {
    basin,
    raw: true,
    signal,
    headers: { accept: "text/event-stream", "s2-format": "base64", ...headers },
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SseParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      for (const event of parser.feed(value)) onEvent(event);
    }
  } finally {
    reader.releaseLock();
  }
}
