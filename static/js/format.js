/** Small formatting helpers for numbers people read. */

export function formatSeconds(ms) {
  const s = ms / 1000;
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 90) return `${Math.round(s)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

export function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${Math.round(bytes / 1024)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

/** "image tokens · time to first token · speed" from a response's `timings` and `usage`. */
export function describeTimings(timings, usage) {
  const parts = [];
  if (timings) {
    if (timings.image_tokens) parts.push(`${timings.image_tokens} image tokens`);
    if (timings.cached_tokens) parts.push(`${timings.cached_tokens} prompt tokens reused`);
    if (timings.queue_ms >= 1000) parts.push(`queued ${formatSeconds(timings.queue_ms)}`);
    if (timings.ttft_ms) parts.push(`first token ${formatSeconds(timings.ttft_ms)}`);
    if (timings.decode_tokens_per_second) parts.push(`${timings.decode_tokens_per_second.toFixed(1)} tokens/s`);
  }
  if (usage && usage.completion_tokens) parts.push(`${usage.completion_tokens} tokens`);
  return parts.join(" · ");
}
