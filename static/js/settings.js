/**
 * Generation settings (max tokens, temperature, top_p, image detail, system prompt): a small dialog whose values
 * persist in localStorage, with a reset to the server's defaults.
 */

const STORAGE_KEY = "loupe.settings.v1";
const DETAILS = ["auto", "low", "high"];

/** Saved values, or {} if there are none or storage is unavailable. */
function loadSaved() {
  try {
    const raw = window.localStorage.getItem(STORAGE_KEY);
    const saved = raw ? JSON.parse(raw) : {};
    return saved && typeof saved === "object" ? saved : {};
  } catch {
    return {};
  }
}

function save(values) {
  try {
    window.localStorage.setItem(STORAGE_KEY, JSON.stringify(values));
  } catch {
    // private browsing or storage full: settings last for this page only
  }
}

function forget() {
  try {
    window.localStorage.removeItem(STORAGE_KEY);
  } catch {
    // nothing to do
  }
}

/** A number within [low, high], or null for "not set / invalid". */
function numberIn(value, low, high, integer) {
  if (value === null || value === undefined || value === "") return null;
  const number = Number(value);
  if (!Number.isFinite(number) || number < low || number > high) return null;
  if (integer && !Number.isInteger(number)) return null;
  return number;
}

export class SettingsPanel {
  /**
   * @param {HTMLDialogElement} dialog
   * @param {HTMLButtonElement} opener
   * @param {{maxNewTokens: number, maxNewTokensLimit: number}} limits
   */
  constructor(dialog, opener, limits) {
    this.dialog = dialog;
    this.opener = opener;
    this.limits = limits;
    this.form = dialog.querySelector("form");
    this.fields = {
      maxTokens: dialog.querySelector("#setting-max-tokens"),
      temperature: dialog.querySelector("#setting-temperature"),
      topP: dialog.querySelector("#setting-top-p"),
      detail: dialog.querySelector("#setting-detail"),
      systemPrompt: dialog.querySelector("#setting-system"),
    };
    this.errorBox = dialog.querySelector("#settings-error");
    this.values = this.sanitise(loadSaved());
    this.fill(this.values);

    opener.addEventListener("click", () => this.open());
    this.form.addEventListener("input", () => this.readForm());
    this.form.addEventListener("submit", (event) => {
      if (!this.readForm()) {
        event.preventDefault();
        this.firstInvalid()?.focus();
      }
    });
    dialog.addEventListener("cancel", () => this.fill(this.values));
    dialog.addEventListener("close", () => {
      this.fill(this.values);
      opener.focus();
    });
    dialog.addEventListener("click", (event) => {
      if (event.target === dialog) dialog.close();  // a click on the backdrop
    });
    dialog.querySelector("#settings-reset").addEventListener("click", () => this.reset());
  }

  get defaults() {
    return { maxTokens: this.limits.maxNewTokens, temperature: null, topP: null, detail: "auto", systemPrompt: "" };
  }

  /** Valid values from anything (saved data may be old or edited by hand). */
  sanitise(raw) {
    const defaults = this.defaults;
    const maxTokens = numberIn(raw.maxTokens, 1, this.limits.maxNewTokensLimit, true);
    return {
      maxTokens: maxTokens ?? defaults.maxTokens,
      temperature: numberIn(raw.temperature, 0, 2, false),
      topP: numberIn(raw.topP, 0, 1, false),
      detail: DETAILS.includes(raw.detail) ? raw.detail : defaults.detail,
      systemPrompt: typeof raw.systemPrompt === "string" ? raw.systemPrompt : "",
    };
  }

  fill(values) {
    this.fields.maxTokens.value = String(values.maxTokens);
    this.fields.temperature.value = values.temperature === null ? "" : String(values.temperature);
    this.fields.topP.value = values.topP === null ? "" : String(values.topP);
    this.fields.detail.value = values.detail;
    this.fields.systemPrompt.value = values.systemPrompt;
    this.showError("");
  }

  firstInvalid() {
    return Object.values(this.fields).find((field) => !field.checkValidity()) || null;
  }

  /** Take the form's values if they are all valid (and save them); say what is wrong otherwise. */
  readForm() {
    const invalid = this.firstInvalid();
    for (const field of Object.values(this.fields)) {
      field.setAttribute("aria-invalid", String(!field.checkValidity()));
    }
    if (invalid) {
      const label = this.dialog.querySelector(`label[for="${invalid.id}"]`).textContent;
      this.showError(`${label}: ${invalid.validationMessage}`);
      return false;
    }
    this.values = this.sanitise({
      maxTokens: this.fields.maxTokens.value,
      temperature: this.fields.temperature.value,
      topP: this.fields.topP.value,
      detail: this.fields.detail.value,
      systemPrompt: this.fields.systemPrompt.value,
    });
    this.store();
    this.showError("");
    return true;
  }

  /** Keep only what differs from the defaults, so a changed server default still reaches everyone else. */
  store() {
    const defaults = this.defaults;
    const changed = Object.fromEntries(
      Object.entries(this.values).filter(([name, value]) => value !== defaults[name]));
    if (Object.keys(changed).length) save(changed);
    else forget();
  }

  showError(message) {
    this.errorBox.textContent = message;
    this.errorBox.hidden = !message;
  }

  reset() {
    forget();
    this.values = this.defaults;
    this.fill(this.values);
    for (const field of Object.values(this.fields)) field.removeAttribute("aria-invalid");
    this.fields.maxTokens.focus();
  }

  open() {
    this.fill(this.values);
    this.dialog.showModal();
    this.fields.maxTokens.focus();
  }

  /** The sampling fields of a request, and its image budget (`detail`, for every image it sends). */
  requestFields() {
    const fields = { max_tokens: this.values.maxTokens };
    if (this.values.temperature !== null) fields.temperature = this.values.temperature;
    if (this.values.topP !== null) fields.top_p = this.values.topP;
    if (this.values.detail !== "auto") fields.detail = this.values.detail;
    return fields;
  }

  get systemPrompt() {
    return this.values.systemPrompt;
  }
}
