/**
 * Keeps an eye on /health: polls often while the model loads (or the server is away), rarely once ready,
 * and tells listeners when the state changes.
 */
import { fetchHealth } from "./api.js";

const POLL_MS = { checking: 1000, loading: 2000, offline: 3000, error: 15000, ok: 15000 };

export class HealthMonitor {
  /** @param {string} url  the /health URL from the template */
  constructor(url) {
    this.url = url;
    this.status = { state: "checking" };
    this.listeners = new Set();
    this.timer = 0;
    this.inFlight = null;
  }

  /** Call `listener(status)` now and on every change. */
  subscribe(listener) {
    this.listeners.add(listener);
    listener(this.status);
  }

  get ready() {
    return this.status.state === "ok";
  }

  start() {
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") this.refresh();
    });
    this.refresh();
  }

  /** Check now (e.g. after a 503 from the chat endpoint), then keep polling. */
  refresh() {
    if (this.inFlight) return this.inFlight;
    clearTimeout(this.timer);
    this.inFlight = fetchHealth(this.url)
      .then((status) => this.update(status))
      .finally(() => {
        this.inFlight = null;
        this.timer = setTimeout(() => this.refresh(), POLL_MS[this.status.state] || 5000);
      });
    return this.inFlight;
  }

  update(status) {
    const before = this.status;
    this.status = status;
    if (before.state !== status.state || before.error !== status.error || before.model !== status.model) {
      for (const listener of this.listeners) listener(status);
    }
  }
}

/** Words for the header badge and the banner above the message box. */
export function describeHealth(status) {
  switch (status.state) {
    case "ok":
      return { badge: `Ready · ${status.model}`, banner: "" };
    case "loading":
      return {
        badge: "Loading the model…",
        banner: "The model is loading; on a CPU this can take a minute or two after the server starts. "
          + "You can attach images and type meanwhile — Send turns on when the model is ready.",
      };
    case "error":
      return { badge: "Model unavailable", banner: `The model could not be loaded: ${status.error}` };
    case "offline":
      return { badge: "Server unreachable", banner: "The server is not answering. Retrying…" };
    default:
      return { badge: "Checking the model…", banner: "" };
  }
}
