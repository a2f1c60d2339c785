/**
 * The history panel: recent conversations (a thumbnail and the first question) in a drawer; open one
 * to read and continue it, delete one. Text from the history is only ever set as textContent here;
 * answers are rendered by the conversation through the Markdown + DOMPurify path.
 */
import { ApiError, deleteRecord, fetchImageAsDataUrl, fetchRecord, listHistory } from "./api.js";
import { Thumbnails } from "./thumbnails.js";

const PAGE_SIZE = 20;
const STATUS_WORDS = { failed: "failed", cancelled: "stopped" };

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** The text parts of an OpenAI-shaped message content, joined. */
function textOf(content) {
  if (typeof content === "string") return content;
  return (content || []).filter((part) => part.type === "text").map((part) => part.text).join("\n\n");
}

function describeTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

/**
 * A record as turns for the conversation, its images fetched as data URLs (sent again when it is continued):
 * [{text, images: [{name, dataUrl, width, height}], answer: {text, status, reason, error, timings, usage},
 *   responseFormat}] (the last turn's format, when it asked for JSON: its answer is shown as a table again).
 * The record's `answer` answers its last user turn; earlier answers are the assistant messages it was sent.
 */
export async function recordTurns(record, signal) {
  const imageInfo = new Map((record.images || []).map((image) => [image.index, image]));
  const asked = [];
  for (const message of record.messages || []) {
    if (message.role === "user") asked.push({ message, reply: "" });
    else if (message.role === "assistant" && asked.length) asked[asked.length - 1].reply = textOf(message.content);
  }
  return Promise.all(asked.map(async ({ message, reply }, i) => {
    const parts = Array.isArray(message.content) ? message.content : [];
    const images = await Promise.all(parts.filter((part) => part.type === "image").map(async (part) => {
      const info = imageInfo.get(part.image) || {};
      return {
        name: `Image ${part.image + 1}`, dataUrl: await fetchImageAsDataUrl(part.url, signal),
        width: info.width, height: info.height,
      };
    }));
    const last = i === asked.length - 1;
    const answer = last
      ? { text: record.answer || "", status: record.status, reason: record.finish_reason, error: record.error,
        timings: record.timings, usage: record.usage, boxes: record.boxes || [] }
      : { text: reply, status: "completed", reason: "stop", error: null, timings: null, usage: null, boxes: [] };
    return { text: textOf(parts), images, answer, responseFormat: last ? record.response_format || null : null };
  }));
}

export class HistoryPanel {
  /**
   * @param {{dialog: HTMLDialogElement, opener: HTMLButtonElement, close: HTMLButtonElement,
   *          list: HTMLUListElement, status: HTMLElement, more: HTMLButtonElement}} elements
   * @param {{url: string, onOpen: (turns: object[], record: object) => void,
   *          announce: (text: string) => void}} options
   */
  constructor(elements, options) {
    Object.assign(this, elements);
    this.options = options;
    this.cursor = null;
    this.loading = null;
    this.busy = false;
    this.openedOne = false;
    this.thumbnails = new Thumbnails();

    this.opener.addEventListener("click", () => this.open());
    this.close.addEventListener("click", () => this.dialog.close());
    this.more.addEventListener("click", () => this.load(true));
    this.dialog.addEventListener("click", (event) => {
      if (event.target === this.dialog) this.dialog.close();  // a click on the backdrop
    });
    this.dialog.addEventListener("close", () => {
      if (this.loading) this.loading.abort();
      if (!this.openedOne) this.opener.focus();
      this.openedOne = false;
    });
  }

  get isOpen() {
    return this.dialog.open;
  }

  open() {
    this.dialog.showModal();
    this.close.focus();
    this.load();
  }

  /** After an answer finished: reload the list if it is on screen (it is reloaded on every open anyway). */
  refresh() {
    if (this.isOpen && !this.busy) this.load();
  }

  showStatus(text, isError = false) {
    this.status.textContent = text;
    this.status.hidden = !text;
    this.status.classList.toggle("error", isError);
  }

  /** Load the newest page (or, with `older`, the page after the last one shown). */
  async load(older = false) {
    if (this.loading) this.loading.abort();
    const abort = new AbortController();
    this.loading = abort;
    if (!older) this.showStatus(this.list.childElementCount ? "" : "Loading…");
    this.more.disabled = true;
    try {
      const page = await listHistory(this.options.url, older ? this.cursor : null, PAGE_SIZE, abort.signal);
      if (!older) {
        this.thumbnails.releaseAll(this.list);
        this.list.replaceChildren();
      }
      for (const summary of page.data) this.list.append(this.renderItem(summary));
      this.cursor = page.next_cursor;
      this.more.hidden = !page.has_more;
      this.showStatus(this.list.childElementCount ? "" : "No conversations yet. Questions you ask are kept here.");
    } catch (error) {
      if (abort.signal.aborted) return;
      this.failed(error);
    } finally {
      if (this.loading === abort) this.loading = null;
      this.more.disabled = false;
    }
  }

  failed(error) {
    if (error instanceof ApiError && error.code === "history_disabled") {
      this.opener.hidden = true;  // history was turned off on the server
      this.dialog.close();
      return;
    }
    this.showStatus(error instanceof ApiError ? error.message : `Something went wrong in the page: ${error}`, true);
  }

  renderItem(summary) {
    const item = element("li", "history-item");
    item.dataset.id = summary.id;
    const question = summary.first_question || (summary.image_count ? "(an image, no question)" : "(no text)");

    const openButton = element("button", "history-open");
    openButton.type = "button";
    if (summary.thumbnail_url) {
      const thumb = element("img", "history-thumb");
      thumb.alt = "";
      thumb.decoding = "async";
      this.thumbnails.show(item, thumb, summary.thumbnail_url);
      openButton.append(thumb);
    } else {
      const blank = element("span", "history-thumb blank");
      blank.setAttribute("aria-hidden", "true");
      openButton.append(blank);
    }
    const words = element("span", "history-words");
    words.append(element("span", "history-question", question));
    if (summary.question && summary.question !== summary.first_question) {
      words.append(element("span", "history-last", `Last: ${summary.question}`));
    }
    const meta = [describeTime(summary.created_at)];
    if (summary.image_count > 1) meta.push(`${summary.image_count} images`);
    if (summary.box_count) meta.push(`${summary.box_count} found`);
    if (STATUS_WORDS[summary.status]) meta.push(STATUS_WORDS[summary.status]);
    const time = element("time", "history-meta", meta.filter(Boolean).join(" · "));
    time.dateTime = summary.created_at || "";
    words.append(time);
    openButton.append(words);
    openButton.addEventListener("click", () => this.openRecord(summary, item));

    const remove = element("button", "icon-button history-delete");
    remove.type = "button";
    remove.setAttribute("aria-label", `Delete “${question}”`);
    remove.title = "Delete";
    remove.append(trashIcon());
    remove.addEventListener("click", () => this.askToDelete(summary, item, question));

    item.append(openButton, remove);
    return item;
  }

  async openRecord(summary, item) {
    if (this.busy) return;
    this.busy = true;
    item.setAttribute("aria-busy", "true");
    this.showStatus("Opening the conversation…");
    try {
      const record = await fetchRecord(summary.url);
      const turns = await recordTurns(record);
      this.openedOne = true;
      this.dialog.close();
      this.options.onOpen(turns, record);
      this.options.announce("Conversation opened from the history; ask a follow-up to continue it.");
    } catch (error) {
      this.failed(error);
    } finally {
      this.busy = false;
      item.removeAttribute("aria-busy");
    }
  }

  /** Deleting asks once, in the row itself: "Delete" or "Keep". */
  askToDelete(summary, item, question) {
    const confirm = element("div", "history-confirm");
    confirm.setAttribute("role", "group");
    confirm.setAttribute("aria-label", `Delete “${question}”?`);
    const words = element("span", "history-confirm-text", "Delete this conversation?");
    words.append(element("span", "history-confirm-question", question));
    confirm.append(words);
    const yes = element("button", "button small danger", "Delete");
    yes.type = "button";
    const no = element("button", "button small", "Keep");
    no.type = "button";
    confirm.append(no, yes);
    const kept = [...item.children];
    item.replaceChildren(confirm);
    item.classList.add("confirming");
    const restore = () => {
      item.classList.remove("confirming");
      item.replaceChildren(...kept);
      item.querySelector(".history-delete").focus();
    };
    no.addEventListener("click", restore);
    confirm.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.preventDefault();  // leave the dialog open: only the question is cancelled
        restore();
      }
    });
    yes.addEventListener("click", () => this.delete(summary, item, restore));
    no.focus();
  }

  async delete(summary, item, restore) {
    try {
      await deleteRecord(summary.url);
    } catch (error) {
      restore();
      this.failed(error);
      return;
    }
    const next = item.nextElementSibling || item.previousElementSibling;
    this.thumbnails.release(item);
    item.remove();
    this.options.announce("Conversation deleted.");
    if (!this.list.childElementCount && this.more.hidden) this.showStatus("No conversations yet.");
    (next?.querySelector(".history-open") || this.close).focus();
  }
}

function trashIcon() {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", "M4 7h16M10 11v6M14 11v6M6 7l1 12a2 2 0 002 2h6a2 2 0 002-2l1-12M9 7V4h6v3");
  path.setAttribute("fill", "none");
  path.setAttribute("stroke", "currentColor");
  path.setAttribute("stroke-width", "2");
  path.setAttribute("stroke-linecap", "round");
  path.setAttribute("stroke-linejoin", "round");
  svg.append(path);
  return svg;
}
