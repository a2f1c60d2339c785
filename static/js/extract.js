/**
 * "Extract fields": pick a shipped JSON schema (static/schemas/) or paste one; the answer is JSON that follows
 * it (the request's response_format), shown as a table with a "Copy as JSON" button.
 */
import { copyWithFeedback } from "./clipboard.js";

export class ExtractDialog {
  /**
   * @param {{dialog: HTMLDialogElement, opener: HTMLButtonElement}} elements
   * @param {{onExtract: (prompt: string, responseFormat: object) => void}} options
   */
  constructor({ dialog, opener }, { onExtract }) {
    this.dialog = dialog;
    this.form = dialog.querySelector("form");
    this.preset = dialog.querySelector("#extract-preset");
    this.schema = dialog.querySelector("#extract-schema");
    this.error = dialog.querySelector("#extract-error");
    this.onExtract = onExtract;
    this.loaded = new Map();  // url → schema text, fetched once
    opener.addEventListener("click", () => this.open());
    this.preset.addEventListener("change", () => this.loadPreset());
    this.schema.addEventListener("input", () => this.showError(""));
    this.form.addEventListener("submit", (event) => {
      if (event.submitter?.value !== "extract") return;
      event.preventDefault();
      this.extract();
    });
  }

  async open() {
    this.showError("");
    this.dialog.showModal();
    if (!this.schema.value) await this.loadPreset();
    this.preset.focus();
  }

  /** Put the chosen shipped schema in the box ("My own schema" empties it for pasting). */
  async loadPreset() {
    const url = this.preset.value;
    if (!url) {
      this.schema.value = "";
      this.schema.focus();
      return;
    }
    try {
      if (!this.loaded.has(url)) {
        const response = await fetch(url, { cache: "no-cache" });
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        this.loaded.set(url, await response.text());
      }
      this.schema.value = this.loaded.get(url);
    } catch (error) {
      this.showError(`The schema could not be loaded (${error.message}); paste one instead.`);
    }
  }

  extract() {
    let schema;
    try {
      schema = JSON.parse(this.schema.value);
    } catch {
      this.showError("The schema is not valid JSON.");
      return;
    }
    if (!schema || typeof schema !== "object" || Array.isArray(schema)) {
      this.showError("The schema must be a JSON object.");
      return;
    }
    this.dialog.close("extract");
    const title = typeof schema.title === "string" && schema.title.trim() ? schema.title.trim() : "the document";
    const name = title.replace(/[^A-Za-z0-9_-]+/g, "_").slice(0, 64) || "extraction";
    const fields = Object.keys(schema.properties || {});
    const prompt = fields.length
      ? `Extract the fields of ${title} from this image, as JSON: ${fields.join(", ")}.`
      : `Extract the information in this image as JSON.`;
    this.onExtract(prompt, { type: "json_schema", json_schema: { name, schema, strict: true } });
  }

  showError(message) {
    this.error.textContent = message;
    this.error.hidden = !message;
    this.schema.setAttribute("aria-invalid", String(Boolean(message)));
  }
}

function cell(tag, text) {
  const node = document.createElement(tag);
  node.textContent = text;
  return node;
}

/** Rows of [field path, value] for a JSON value: nested objects as dotted paths, list items by number. */
function rows(value, path = "") {
  if (value !== null && typeof value === "object") {
    const entries = Array.isArray(value) ? value.map((v, i) => [String(i + 1), v]) : Object.entries(value);
    if (entries.length === 0) return [[path || "(empty)", Array.isArray(value) ? "(none)" : "(empty)"]];
    return entries.flatMap(([key, item]) => rows(item, path ? `${path}.${key}` : key));
  }
  return [[path || "value", value === null ? "—" : String(value)]];
}

/**
 * Show an answer's JSON as a table of its fields, with "Copy as JSON"; false if the text is not JSON.
 * @param {HTMLElement} container  the answer's body, whose Markdown rendering the table replaces
 */
export function showFields(container, text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch {
    return false;
  }
  const table = document.createElement("table");
  table.className = "fields";
  const head = table.createTHead().insertRow();
  head.append(cell("th", "Field"), cell("th", "Value"));
  const body = table.createTBody();
  for (const [field, shown] of rows(value)) {
    const row = body.insertRow();
    row.append(cell("th", field), cell("td", shown));
    row.firstChild.scope = "row";
  }
  const copy = cell("button", "Copy as JSON");
  copy.type = "button";
  copy.className = "button small";
  copy.addEventListener("click", () => copyWithFeedback(copy, JSON.stringify(value, null, 2)));
  const wrap = document.createElement("div");
  wrap.className = "fields-view";
  wrap.append(table, copy);
  container.replaceChildren(wrap);
  return true;
}
