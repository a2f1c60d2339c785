/**
 * The API key dialog: asks for the key the server needs, and says so when the server refused the last one;
 * and the settings' "Forget key" control.
 */
import { forgetKey, hasKey, keyRequired } from "./api-key.js";

export class KeyDialog {
  /** @param {HTMLDialogElement} dialog  the #key-dialog of the page */
  constructor(dialog) {
    this.dialog = dialog;
    this.form = dialog.querySelector("form");
    this.input = dialog.querySelector("#api-key");
    this.error = dialog.querySelector("#key-error");
    this.resolve = null;
    this.returnFocus = null;

    this.form.addEventListener("submit", (event) => {
      // A submit with an empty box keeps the dialog open; "Not now" (formnovalidate) always closes it.
      if (event.submitter?.value === "save" && !this.input.value.trim()) {
        event.preventDefault();
        this.showError("Enter the API key.");
        this.input.focus();
      }
    });
    dialog.addEventListener("close", () => this.closed());
  }

  /**
   * Ask for the key.
   * @param {{rejected: boolean}} options  rejected: the server refused the key the page sent
   * @returns {Promise<string|null>} the key, or null when the person chose "Not now" or pressed Escape
   */
  ask({ rejected = false } = {}) {
    this.input.value = "";
    this.showError(rejected ? "The server did not accept that key. Check it and enter it again." : "");
    this.dialog.returnValue = "";
    this.returnFocus = document.activeElement;
    this.dialog.showModal();
    this.input.focus();
    return new Promise((resolve) => { this.resolve = resolve; });
  }

  closed() {
    const key = this.dialog.returnValue === "save" ? this.input.value.trim() : "";
    this.input.value = "";
    const resolve = this.resolve;
    this.resolve = null;
    if (this.returnFocus?.isConnected) this.returnFocus.focus();
    resolve?.(key || null);
  }

  showError(message) {
    this.error.textContent = message;
    this.error.hidden = !message;
    this.input.setAttribute("aria-invalid", String(Boolean(message)));
  }
}

/**
 * The settings' "Forget key" control: shown while the server needs a key or one is stored.
 * @param {{section: HTMLElement, button: HTMLButtonElement, help: HTMLElement, opener: HTMLButtonElement}} elements
 */
export function wireForgetKey({ section, button, help, opener }) {
  const kept = help.textContent;
  const update = () => {
    section.hidden = !keyRequired() && !hasKey();
    if (hasKey()) help.textContent = kept;
  };
  button.addEventListener("click", () => {
    forgetKey();
    update();
    help.textContent = "Forgotten. The page asks for a key before its next request.";
  });
  opener.addEventListener("click", update);  // a key may have been entered since the last look
  update();
}
