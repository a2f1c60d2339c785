/**
 * Server-Sent Events over fetch: turns a response body into its events (their ids and `data` payloads).
 * (EventSource cannot POST, so the chat stream is read by hand.)
 */

/**
 * Yield each event of a `text/event-stream` body, in order, as {id, data}: `id` is the event's own `id`
 * field, or "" (the stream's last id is the caller's to keep, for `Last-Event-ID`).
 * Comment lines (": ...") and other fields are ignored; multi-line data is joined with "\n".
 * @param {ReadableStream<Uint8Array>} body
 * @returns {AsyncGenerator<{id: string, data: string}>}
 */
export async function* readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let dataLines = [];
  let id = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let newline;
      while ((newline = buffer.search(/\r\n|\r|\n/)) !== -1) {
        // A lone "\r" at the very end may be the first half of "\r\n": wait for more input.
        if (buffer[newline] === "\r" && newline === buffer.length - 1) break;
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
        if (line === "") {
          if (dataLines.length) yield { id, data: dataLines.join("\n") };
          dataLines = [];
          id = "";
        } else if (line.startsWith("data:")) {
          dataLines.push(line.slice(line[5] === " " ? 6 : 5));
        } else if (line.startsWith("id:")) {
          id = line.slice(line[3] === " " ? 4 : 3);
        }
      }
    }
    // An event is dispatched only at its blank line: a body cut off before one is not an event (spec).
  } finally {
    reader.cancel().catch(() => {});
  }
}
