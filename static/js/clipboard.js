/**
 * Copying text, also where the async Clipboard API is missing (plain http on a LAN address),
 * and the copy buttons' brief "Copied" feedback.
 */

/** @returns {Promise<boolean>} whether the text was copied */
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      // permission refused: try the old way
    }
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "offscreen-copy";
  document.body.append(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch {
    ok = false;
  }
  area.remove();
  return ok;
}

const FEEDBACK_MS = 1500;
const restoring = new WeakMap();  // button → {label, timer}: a second click meanwhile keeps the real label

/** Copy `text` and say on `button` how it went ("Copied" or "Copy failed") for a moment. */
export async function copyWithFeedback(button, text) {
  const label = restoring.get(button)?.label ?? button.textContent;
  const ok = await copyText(text);
  clearTimeout(restoring.get(button)?.timer);
  button.textContent = ok ? "Copied" : "Copy failed";
  const timer = setTimeout(() => {
    button.textContent = label;
    restoring.delete(button);
  }, FEEDBACK_MS);
  restoring.set(button, { label, timer });
  return ok;
}
