/**
 * The page's client for Loupe's public API: streamed chat completions, the health check and the history.
 */
import { apiFetch } from "./api-key.js";
import { readEvents } from "./sse.js";

/** An error to show the person: the server's `error.message`, or our own words for what went wrong. */
export class ApiError extends Error {
  constructor(message, { status = 0, type = "", code = "" } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.type = type;
    this.code = code;
  }
}

const STATUS_WORDS = {
  400: "The server could not use this request",
  413: "The request is too large for the server",
  415: "The server does not accept this kind of data",
  429: "The server is busy with other requests; try again shortly",
  500: "The server had an error while answering",
  502: "The server could not be reached through the proxy",
  503: "The model is not ready yet; try again shortly",
  504: "The server took too long to answer",
};

/** The readable message of a non-2xx response: the OpenAI error envelope's message if there is one. */
async function errorFromResponse(response) {
  let message = "";
  let type = "";
  let code = "";
  try {
    const body = await response.json();
    if (body && body.error) {
      message = typeof body.error === "string" ? body.error : body.error.message || "";
      type = body.error.type || "";
      code = body.error.code || "";
    }
  } catch {
    // not JSON: fall back to words for the status
  }
  if (!message) {
    const words = STATUS_WORDS[response.status] || "The server answered with an error";
    message = `${words} (HTTP ${response.status}).`;
  }
  return new ApiError(message, { status: response.status, type, code });
}

// Waits between attempts to resume a broken stream: quick at first (a blip), then every 2 s while the
// server still keeps the generation (its STREAM_RESUME_SECONDS, in the page's configuration).
const RESUME_DELAYS_MS = [250, 500, 1000, 2000];

/**
 * Stream one chat completion. Yields events:
 *   {kind: "started"}                      the model began on this request (it was queued until then)
 *   {kind: "text", text}                   answer text
 *   {kind: "finish", reason, timings, boxes}  the end of the answer; boxes: what it located (often none)
 *   {kind: "usage", usage}                 token counts
 * When the connection breaks mid-answer and the server keeps the stream (`X-Stream-ID`), it reconnects
 * with `Last-Event-ID` and goes on from the event after the last one read: nothing missed, nothing twice.
 * Throws ApiError for anything the person should read; an aborted request throws the AbortError, and
 * tells the server to stop the generation.
 * @param {string} url
 * @param {object} body  the JSON request (stream: true is set here)
 * @param {AbortSignal} signal
 * @param {{conversation?: string, resumeSeconds?: number}} options  the conversation's key
 *   (X-Loupe-Conversation, for a proxy to route on) and how long the server waits for a reconnection
 */
export async function* streamChat(url, body, signal, { conversation = "", resumeSeconds = 30 } = {}) {
  let response;
  try {
    response = await apiFetch(url, {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        Accept: "text/event-stream",
        ...(conversation ? { "X-Loupe-Conversation": conversation } : {}),
      },
      body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
      signal,
      cache: "no-store",
    });
  } catch (error) {
    if (signal.aborted) throw error;
    throw new ApiError("Could not reach the server. Check that Loupe is running and try again.");
  }
  if (!response.ok) throw await errorFromResponse(response);
  if (!response.body) throw new ApiError("The server's answer had no body.");

  const streamId = response.headers.get("X-Stream-ID");
  const resumeUrl = streamId ? `${url}/streams/${encodeURIComponent(streamId)}` : "";
  // The stream lives on the instance that generates it: a reconnection carries the key a proxy routed on.
  const routeKey = response.headers.get("X-Loupe-Conversation") || conversation;
  const state = { started: false, finished: false, lastEventId: "" };
  try {
    for (;;) {
      let broken = false;
      try {
        for await (const event of readEvents(response.body)) {
          if (event.data === "[DONE]") return;
          yield* chunkEvents(event.data, state);
          if (event.id) state.lastEventId = event.id;  // only once its chunk is handled
        }
      } catch (error) {
        if (signal.aborted || error instanceof ApiError) throw error;
        broken = true;
      }
      if (!resumeUrl) {
        if (state.finished) return;
        throw new ApiError(broken
          ? "The connection to the server broke while the answer was streaming."
          : "The answer was cut off: the server closed the connection before it finished.");
      }
      response = await reconnect(resumeUrl, state.lastEventId, routeKey, signal, resumeSeconds);
    }
  } finally {
    if (signal.aborted && resumeUrl) {
      // Stop pressed: the server would otherwise keep generating for a reconnection that will not come.
      apiFetch(resumeUrl, { method: "DELETE", keepalive: true }).catch(() => {});
    }
  }
}

/** The events of one chunk's data; throws ApiError for an error frame or data that cannot be read. */
function* chunkEvents(data, state) {
  let chunk;
  try {
    chunk = JSON.parse(data);
  } catch {
    throw new ApiError("The server sent a part of the answer that could not be read.");
  }
  if (chunk.error) {
    const error = chunk.error;
    throw new ApiError(error.message || "The server had an error while answering.", {
      status: 0, type: error.type || "", code: error.code || "",
    });
  }
  const choice = Array.isArray(chunk.choices) ? chunk.choices[0] : undefined;
  if (choice) {
    const delta = choice.delta || {};
    if (!state.started) {
      state.started = true;
      yield { kind: "started" };
    }
    if (typeof delta.content === "string" && delta.content !== "") {
      yield { kind: "text", text: delta.content };
    }
    if (choice.finish_reason) {
      state.finished = true;
      const boxes = Array.isArray(delta.boxes) ? delta.boxes : [];
      yield { kind: "finish", reason: choice.finish_reason, timings: chunk.timings || null, boxes };
    }
  }
  if (chunk.usage) yield { kind: "usage", usage: chunk.usage };
}

/**
 * Reopen a broken stream after its last event, trying again while the server may still hold it.
 * @returns {Promise<Response>} the resumed stream
 */
async function reconnect(resumeUrl, lastEventId, routeKey, signal, resumeSeconds) {
  const giveUpAt = Date.now() + resumeSeconds * 1000;
  for (let attempt = 0; ; attempt += 1) {
    await pause(RESUME_DELAYS_MS[Math.min(attempt, RESUME_DELAYS_MS.length - 1)], signal);
    let response = null;
    try {
      const headers = { Accept: "text/event-stream" };
      if (lastEventId) headers["Last-Event-ID"] = lastEventId;
      if (routeKey) headers["X-Loupe-Conversation"] = routeKey;
      response = await apiFetch(resumeUrl, { headers, signal, cache: "no-store" });
    } catch (error) {
      if (signal.aborted) throw error;  // otherwise still offline: try again
    }
    if (response && response.ok && response.body) return response;
    if (response && ![502, 503, 504].includes(response.status)) {
      const error = await errorFromResponse(response);
      throw new ApiError(`The connection broke while the answer was streaming, and the rest could not be fetched: ${error.message}`,
        { status: error.status, type: error.type, code: error.code });
    }
    if (Date.now() >= giveUpAt) {
      throw new ApiError("The connection to the server broke while the answer was streaming, and could not be restored.");
    }
  }
}

/** Wait `ms`, or until the signal aborts (then throw its reason). */
function pause(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(signal.reason);
    }, { once: true });
  });
}

/**
 * Ask /health how the model is doing.
 * @returns {Promise<{state: "ok"|"loading"|"error"|"offline", model?: string, error?: string, queueDepth?: number}>}
 */
export async function fetchHealth(url, signal) {
  let response;
  try {
    response = await fetch(url, { cache: "no-store", signal, headers: { Accept: "application/json" } });
  } catch (error) {
    if (signal && signal.aborted) throw error;
    return { state: "offline" };
  }
  let body = {};
  try {
    body = await response.json();
  } catch {
    return { state: "offline" };
  }
  if (body.status === "ok") {
    return { state: "ok", model: body.model, device: body.device, dtype: body.dtype, queueDepth: body.queue_depth };
  }
  if (body.status === "loading") return { state: "loading", model: body.model };
  if (body.status === "error") return { state: "error", error: body.error || "unknown reason" };
  return { state: "offline" };
}

/** GET or DELETE a JSON resource of the history; non-2xx answers throw ApiError (`code` history_disabled when off). */
async function historyJson(url, { method = "GET", signal } = {}) {
  let response;
  try {
    response = await apiFetch(url, { method, signal, cache: "no-store", headers: { Accept: "application/json" } });
  } catch (error) {
    if (signal && signal.aborted) throw error;
    throw new ApiError("Could not reach the server. Check that Loupe is running and try again.");
  }
  if (!response.ok) throw await errorFromResponse(response);
  try {
    return await response.json();
  } catch {
    throw new ApiError("The server's answer could not be read.");
  }
}

/**
 * One page of the history, newest first: {data: [summary…], has_more, next_cursor}.
 * @param {string} url  the list URL from the template
 * @param {string|null} cursor  a `next_cursor` from the page before
 */
export function listHistory(url, cursor, limit = 20, signal = undefined) {
  const params = new URLSearchParams({ limit: String(limit) });
  if (cursor) params.set("cursor", cursor);
  return historyJson(`${url}?${params}`, { signal });
}

/** The whole record (messages, answer, images…) at a summary's `url`. */
export function fetchRecord(url, signal) {
  return historyJson(url, { signal });
}

/** Delete the record at a summary's `url`. */
export function deleteRecord(url) {
  return historyJson(url, { method: "DELETE" });
}

/** A recorded image's bytes (fetched with the API key, which an `<img src>` could not send). */
export async function fetchImageBlob(url, signal) {
  let response;
  try {
    response = await apiFetch(url, { signal });
  } catch (error) {
    if (signal && signal.aborted) throw error;
    throw new ApiError("Could not reach the server to fetch an image of this conversation.");
  }
  if (!response.ok) throw await errorFromResponse(response);
  return response.blob();
}

/** A recorded image as a data URL, as the page sends images. */
export async function fetchImageAsDataUrl(url, signal) {
  const blob = await fetchImageBlob(url, signal);
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result));
    reader.onerror = () => reject(new ApiError("An image of this conversation could not be read."));
    reader.readAsDataURL(blob);
  });
}
