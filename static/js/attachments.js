/**
 * Images waiting to be sent: added by the file button, drag-and-drop onto the page or pasting;
 * shown as thumbnails that can be removed; refused files explained in the server's words.
 */
import { ImageRefused, prepareImage } from "./images.js";
import { formatBytes } from "./format.js";

export class AttachmentTray {
  /**
   * @param {{list: HTMLUListElement, notice: HTMLElement, fileInput: HTMLInputElement,
   *          attachButton: HTMLButtonElement, dropOverlay: HTMLElement}} elements
   * @param {{limits: object, acceptedTypes: string[], imagesInHistory: () => number,
   *          onChange: () => void, announce: (text: string) => void}} options
   */
  constructor(elements, options) {
    Object.assign(this, elements);
    this.options = options;
    this.items = [];
    this.pending = 0;
    this.preparing = new Set();  // the promises of add() calls still preparing their files
    this.epoch = 0;  // bumped by clear(), so files still preparing then are not added afterwards
    this.dragDepth = 0;

    this.attachButton.addEventListener("click", () => this.fileInput.click());
    this.fileInput.addEventListener("change", () => {
      this.add([...this.fileInput.files]);
      this.fileInput.value = "";
    });
    document.addEventListener("paste", (event) => this.onPaste(event));
    document.addEventListener("dragenter", (event) => this.onDragEnter(event));
    document.addEventListener("dragover", (event) => {
      if (this.carriesFiles(event)) {
        event.preventDefault();
        event.dataTransfer.dropEffect = "copy";
      }
    });
    document.addEventListener("dragleave", () => {
      this.dragDepth = Math.max(0, this.dragDepth - 1);
      if (this.dragDepth === 0) this.dropOverlay.hidden = true;
    });
    document.addEventListener("drop", (event) => this.onDrop(event));
  }

  get count() {
    return this.items.length;
  }

  get busy() {
    return this.pending > 0;
  }

  carriesFiles(event) {
    return Boolean(event.dataTransfer) && [...event.dataTransfer.types].includes("Files");
  }

  onDragEnter(event) {
    if (!this.carriesFiles(event)) return;
    event.preventDefault();
    this.dragDepth += 1;
    this.dropOverlay.hidden = false;
  }

  onDrop(event) {
    if (!this.carriesFiles(event)) return;
    event.preventDefault();
    this.dragDepth = 0;
    this.dropOverlay.hidden = true;
    this.add([...event.dataTransfer.files]);
  }

  onPaste(event) {
    const files = [...(event.clipboardData?.files || [])];
    if (!files.length) return;  // ordinary text paste
    event.preventDefault();
    this.add(files);
  }

  /** Wait until every file being prepared is in the tray (or refused). */
  async ready() {
    while (this.preparing.size) await Promise.allSettled([...this.preparing]);
  }

  /** Check, shrink and show the files; refusals are listed in the notice. */
  add(files) {
    if (!files.length) return Promise.resolve();
    const adding = this.prepareAll(files);
    this.preparing.add(adding);
    return adding.finally(() => this.preparing.delete(adding));
  }

  async prepareAll(files) {
    const problems = [];
    const room = this.options.limits.maxImages - this.options.imagesInHistory() - this.items.length - this.pending;
    if (files.length > room) {
      const max = this.options.limits.maxImages;
      problems.push(room > 0
        ? `Only ${room} more image${room === 1 ? "" : "s"} fit: at most ${max} images per conversation (start a new chat for more).`
        : `At most ${max} images per conversation; start a new chat to send more.`);
      files = files.slice(0, Math.max(0, room));
    }
    this.pending += files.length;
    const epoch = this.epoch;
    const placeholders = files.map((file) => this.renderPlaceholder(file));
    this.options.onChange();
    const results = await Promise.allSettled(
      files.map((file) => prepareImage(file, this.options.limits, this.options.acceptedTypes)));
    this.pending -= files.length;
    if (epoch !== this.epoch) return;  // the tray was cleared (new chat) meanwhile
    results.forEach((result, i) => {
      if (result.status === "fulfilled") {
        this.items.push(result.value);
        placeholders[i].replaceWith(this.renderItem(result.value));
      } else {
        placeholders[i].remove();
        const reason = result.reason instanceof ImageRefused
          ? result.reason.message : "The image could not be read.";
        problems.push(`${files[i].name || "Pasted image"}: ${reason}`);
      }
    });
    this.showProblems(problems);
    const added = results.filter((r) => r.status === "fulfilled").length;
    if (added) this.options.announce(`${added} image${added === 1 ? "" : "s"} attached.`);
    this.list.hidden = this.list.childElementCount === 0;
    this.options.onChange();
  }

  /** A stand-in shown while a file is checked and scaled: large photos take a moment. */
  renderPlaceholder(file) {
    const li = document.createElement("li");
    li.className = "attachment preparing";
    li.setAttribute("aria-busy", "true");
    const frame = document.createElement("span");
    frame.className = "attachment-frame";
    const spinner = document.createElement("span");
    spinner.className = "spinner";
    spinner.setAttribute("aria-hidden", "true");
    frame.append(spinner);
    const caption = document.createElement("span");
    caption.className = "attachment-caption";
    caption.textContent = "Preparing…";
    li.title = `Preparing ${file.name || "the pasted image"}…`;
    li.append(frame, caption);
    this.list.append(li);
    this.list.hidden = false;
    return li;
  }

  showProblems(problems) {
    this.notice.replaceChildren(...problems.map((text) => {
      const line = document.createElement("span");
      line.className = "notice-line";
      line.textContent = text;
      return line;
    }));
    this.notice.hidden = problems.length === 0;
  }

  renderItem(item) {
    const li = document.createElement("li");
    li.className = "attachment";
    const img = document.createElement("img");
    img.src = item.dataUrl;
    img.alt = item.name;
    const caption = document.createElement("span");
    caption.className = "attachment-caption";
    caption.textContent = `${item.width}×${item.height}`;
    caption.title = item.resized
      ? `${item.name}: scaled from ${item.originalWidth}×${item.originalHeight} to ${item.width}×${item.height}, ${formatBytes(item.bytes)}`
      : `${item.name}: ${item.width}×${item.height}, ${formatBytes(item.bytes)}`;
    li.title = caption.title;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "attachment-remove";
    remove.setAttribute("aria-label", `Remove ${item.name}`);
    remove.textContent = "×";
    remove.addEventListener("click", () => {
      const index = this.items.indexOf(item);
      if (index >= 0) this.items.splice(index, 1);
      const next = li.nextElementSibling?.querySelector("button") || li.previousElementSibling?.querySelector("button");
      li.remove();
      this.list.hidden = this.list.childElementCount === 0;
      this.showProblems([]);
      this.options.announce(`${item.name} removed.`);
      this.options.onChange();
      (next || document.getElementById("prompt")).focus();
    });
    li.append(img, caption, remove);
    return li;
  }

  /** Hand the images over for sending and empty the tray. */
  take() {
    const items = this.items;
    this.items = [];
    this.list.replaceChildren();
    this.list.hidden = true;
    this.showProblems([]);
    return items;
  }

  clear() {
    this.epoch += 1;
    this.take();
    this.options.onChange();
  }
}
