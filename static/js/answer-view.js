/**
 * One assistant turn on screen: what the model is doing while we wait (queued, reading the image,
 * writing), the streamed answer rendered as Markdown, and afterwards its numbers and actions.
 */
import { addCodeCopyButtons, renderMarkdown } from "./markdown.js";
import { renderBoxes } from "./boxes.js";
import { copyWithFeedback } from "./clipboard.js";
import { describeTimings, formatSeconds } from "./format.js";

const SLOW_READING_MS = 8000;

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export class AnswerView {
  /**
   * @param {{hasImages: boolean, announce: (text: string) => void, onChange: () => void,
   *          onRegenerate: () => void, onRetry: () => void}} options
   */
  constructor(options) {
    this.options = options;
    this.text = "";
    this.phase = "queued";
    this.startedAt = performance.now();
    this.phaseStartedAt = this.startedAt;
    this.renderPending = 0;
    this.timer = 0;

    this.root = element("article", "turn assistant");
    this.root.dataset.state = "queued";
    this.root.append(element("h3", "visually-hidden", "Loupe"));
    const body = element("div", "turn-body");
    this.answer = element("div", "answer markdown");
    this.answer.setAttribute("aria-live", "polite");
    this.answer.setAttribute("aria-busy", "true");
    this.error = element("div", "error-text");
    this.error.hidden = true;

    this.progress = element("div", "progress");
    this.spinner = element("span", "spinner");
    this.spinner.setAttribute("aria-hidden", "true");
    this.progressText = element("span", "progress-text");
    this.elapsed = element("span", "elapsed");
    this.hint = element("span", "progress-hint");
    this.progress.append(this.spinner, this.progressText, this.elapsed, this.hint);

    this.footer = element("div", "turn-footer");
    this.footer.hidden = true;
    this.stats = element("span", "stats");
    this.actions = element("span", "turn-actions");
    this.footer.append(this.stats, this.actions);

    this.boxes = element("div", "answer-boxes");
    this.boxes.hidden = true;
    body.append(this.answer, this.boxes, this.error, this.progress, this.footer);
    this.root.append(body);
    this.setPhase("queued");
    this.timer = setInterval(() => this.tick(), 1000);
  }

  /** "queued" → "reading" → "writing". */
  setPhase(phase) {
    this.phase = phase;
    this.phaseStartedAt = performance.now();
    this.root.dataset.state = phase;
    const words = {
      queued: "Queued — waiting for the model…",
      reading: this.options.hasImages ? "Reading the image…" : "Reading the prompt…",
      writing: "Writing…",
    }[phase];
    this.progressText.textContent = words;
    this.hint.textContent = "";
    this.tick();
    if (phase !== "writing") this.options.announce(words);
  }

  tick() {
    const now = performance.now();
    this.elapsed.textContent = formatSeconds(now - this.startedAt);
    if (this.phase === "reading" && now - this.phaseStartedAt > SLOW_READING_MS && !this.hint.textContent) {
      this.hint.textContent = this.options.hasImages
        ? "On a CPU the model reads an image for a while before the first word; the answer will stream in."
        : "On a CPU a long conversation takes a while to read before the first word.";
    }
    if (this.phase === "queued" && now - this.phaseStartedAt > SLOW_READING_MS && !this.hint.textContent) {
      this.hint.textContent = "Other requests are ahead of this one; it starts when the model is free.";
    }
  }

  append(text) {
    if (this.phase !== "writing") this.setPhase("writing");
    this.text += text;
    if (!this.renderPending) {
      this.renderPending = requestAnimationFrame(() => {
        this.renderPending = 0;
        this.render();
      });
    }
  }

  render() {
    this.answer.innerHTML = renderMarkdown(this.text);
    this.options.onChange();
  }

  /** Stop the timer and render the final text; `state` is done, stopped or error. */
  settle(state) {
    clearInterval(this.timer);
    if (this.renderPending) cancelAnimationFrame(this.renderPending);
    this.renderPending = 0;
    this.render();
    addCodeCopyButtons(this.answer);
    this.root.dataset.state = state;
    this.answer.setAttribute("aria-busy", "false");
    this.progress.hidden = true;
    this.footer.hidden = false;
    if (!this.text) this.answer.hidden = true;
  }

  finish(reason, timings, usage) {
    this.settle("done");
    this.root.dataset.finishReason = reason || "";
    if (timings) {
      this.root.dataset.queueMs = String(timings.queue_ms ?? "");
      this.root.dataset.ttftMs = String(timings.ttft_ms ?? "");
    }
    const words = describeTimings(timings, usage);
    const notes = [];
    if (reason === "length") notes.push("cut off at the max-tokens limit");
    this.stats.textContent = [words, ...notes].filter(Boolean).join(" · ");
    this.addActions();
    this.options.announce("The answer is complete.");
  }

  /**
   * Draw the boxes and points the answer located over the image they are in (nothing when there are none).
   * @param {object[]} regions  the response's `boxes`
   * @param {{dataUrl: string, name?: string, width?: number, height?: number}|undefined} image
   */
  showBoxes(regions, image) {
    if (!Array.isArray(regions) || !regions.length || !image) return;
    this.boxes.replaceChildren(renderBoxes(image, regions));
    this.boxes.hidden = false;
    this.options.onChange();
  }

  stopped() {
    this.settle("stopped");
    this.stats.textContent = this.text ? "Stopped." : "Stopped before the first word.";
    this.addActions();
    this.options.announce("Stopped.");
  }

  failed(message) {
    this.settle("error");
    this.error.hidden = false;
    this.error.setAttribute("role", "alert");
    const strong = element("strong", "", "Error: ");
    this.error.replaceChildren(strong, document.createTextNode(message));
    this.stats.textContent = "";
    const retry = element("button", "button small regenerate", "Retry");
    retry.type = "button";
    retry.addEventListener("click", () => this.options.onRetry());
    this.actions.replaceChildren(retry);
  }

  addActions() {
    const buttons = [];
    if (this.text) {
      const copy = element("button", "button small", "Copy");
      copy.type = "button";
      copy.setAttribute("aria-label", "Copy the answer");
      copy.addEventListener("click", () => copyWithFeedback(copy, this.text));
      buttons.push(copy);
    }
    const again = element("button", "button small regenerate", "Regenerate");
    again.type = "button";
    again.setAttribute("aria-label", "Regenerate the answer");
    again.addEventListener("click", () => this.options.onRegenerate());
    buttons.push(again);
    this.actions.replaceChildren(...buttons);
  }

  /** Show or hide Regenerate / Retry (only for the last answer, and not while another one streams). */
  setRegenerable(enabled) {
    for (const button of this.actions.querySelectorAll(".regenerate")) button.hidden = !enabled;
  }

  dispose() {
    clearInterval(this.timer);
    if (this.renderPending) cancelAnimationFrame(this.renderPending);
    this.root.remove();
  }
}
