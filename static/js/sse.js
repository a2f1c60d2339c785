/**
 * Server-Sent Events over fetch: turns a response body into the `data` payloads of its events.
 * (EventSource cannot POST, so the chat stream is read by hand.)
 */

/**
 * Yield the data of each event of a `text/event-stream` body, in order.
 * Comment lines (": ...") and fields other than `data` are ignored; multi-line data is joined with "\n".
 * @param {ReadableStream<Uint8Array>} body
 * @returns {AsyncGenerator<string>}
 */
export async function* readEventData(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let dataLines = [];
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
          if (dataLines.length) yield dataLines.join("\n");
          dataLines = [];
        } else if (line.startsWith("data:")) {
          dataLines.push(line.slice(line[5] === " " ? 6 : 5));
        }
      }
    }
    if (dataLines.length) yield dataLines.join("\n");
  } finally {
    reader.cancel().catch(() => {});
  }
}
