/**
 * Model output → safe HTML: Markdown by `marked`, then sanitised by `DOMPurify` (model output is untrusted).
 * Only formatting survives: no scripts, styles, forms, frames or images (an image URL could leak data).
 */
import { Marked } from "../vendor/marked/marked.esm.js";
import DOMPurify from "../vendor/dompurify/purify.es.mjs";
import { copyWithFeedback } from "./clipboard.js";

const marked = new Marked({ gfm: true, breaks: false, async: false });

const ALLOWED_TAGS = [
  "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "b", "em", "i", "del", "s", "sub", "sup",
  "code", "pre", "kbd", "blockquote", "ul", "ol", "li", "table", "thead", "tbody", "tr", "th", "td",
  "a", "span", "div", "details", "summary", "dl", "dt", "dd",
];
const ALLOWED_ATTR = ["href", "title", "align", "start", "class", "colspan", "rowspan"];

let hooked = false;
function addHooks() {
  if (hooked) return;
  hooked = true;
  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A") {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer nofollow");
    }
    if (node.hasAttribute("class")) {
      // Keep only marked's code language classes.
      const kept = [...node.classList].filter((name) => /^language-[\w+#.-]{1,40}$/.test(name));
      if (kept.length) node.setAttribute("class", kept.join(" "));
      else node.removeAttribute("class");
    }
  });
}

/**
 * Safe HTML for a Markdown text.
 * @param {string} text
 * @returns {string}
 */
export function renderMarkdown(text) {
  addHooks();
  const html = marked.parse(text);
  return DOMPurify.sanitize(html, {
    ALLOWED_TAGS,
    ALLOWED_ATTR,
    ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#)/i,
    KEEP_CONTENT: true,
  });
}

/** Add a "Copy" button to each code block of a rendered answer. */
export function addCodeCopyButtons(container) {
  for (const pre of container.querySelectorAll("pre")) {
    if (pre.parentElement && pre.parentElement.classList.contains("code-block")) continue;
    const wrapper = document.createElement("div");
    wrapper.className = "code-block";
    pre.replaceWith(wrapper);
    wrapper.append(pre);
    const button = document.createElement("button");
    button.type = "button";
    button.className = "code-copy";
    button.textContent = "Copy";
    button.setAttribute("aria-label", "Copy code");
    button.addEventListener("click", () => copyWithFeedback(button, pre.innerText));
    wrapper.append(button);
  }
}
