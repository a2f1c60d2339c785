/**
 * The conversation: the turns on screen and the history sent with each request
 * (user turns with their images again, assistant turns as text).
 */

/**
 * The conversation's key, sent as `X-Loupe-Conversation` so a proxy in front of several Loupe
 * instances sends every turn to the one that already read its image. Derived from the start of the
 * conversation (system prompt, first question and its images), not drawn at random, so a conversation
 * reopened from the history goes back to the same instance too. Any stable name would do: a proxy only
 * hashes it. cyrb53 (a public-domain 53-bit string hash): fast on megabytes of data URLs, and needs
 * no crypto.subtle, which browsers give only to https pages.
 * @param {object[]} messages  a request's messages
 */
export function conversationKey(messages) {
  const firstUser = messages.findIndex((message) => message.role === "user");
  const start = JSON.stringify(messages.slice(0, firstUser + 1));
  let h1 = 0xdeadbeef;
  let h2 = 0x41c6ce57;
  for (let i = 0; i < start.length; i++) {
    const code = start.charCodeAt(i);
    h1 = Math.imul(h1 ^ code, 2654435761);
    h2 = Math.imul(h2 ^ code, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  const hash = 4294967296 * (2097151 & h2) + (h1 >>> 0);
  return `page-${hash.toString(16).padStart(14, "0")}`;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A user turn's element: its images and its text (plain text, never HTML). */
function renderUserTurn(text, images) {
  const root = element("article", "turn user");
  root.append(element("h3", "visually-hidden", "You"));
  const body = element("div", "turn-body");
  if (images.length) {
    const strip = element("div", "turn-images");
    for (const image of images) {
      const img = element("img");
      img.src = image.dataUrl;
      img.alt = image.name;
      if (image.width && image.height) {
        img.width = image.width;
        img.height = image.height;
      }
      img.decoding = "async";
      strip.append(img);
    }
    body.append(strip);
  }
  body.append(element("div", "bubble", text));
  const note = element("p", "turn-note");
  note.hidden = true;
  body.append(note);
  root.append(body);
  return root;
}

export class Conversation {
  /** @param {HTMLElement} container  where turns go; @param {HTMLElement} emptyState shown when empty */
  constructor(container, emptyState) {
    this.container = container;
    this.emptyState = emptyState;
    /** @type {{user: {text: string, images: object[], element: HTMLElement}, answer: object|null,
     *          text: string, left: boolean}[]} */
    this.exchanges = [];
  }

  get isEmpty() {
    return this.exchanges.length === 0;
  }

  get last() {
    return this.exchanges[this.exchanges.length - 1] || null;
  }

  /** Images kept in the history (each is sent again with every request). */
  imageCount() {
    return this.exchanges.filter((x) => !x.left).reduce((sum, x) => sum + x.user.images.length, 0);
  }

  hasImages() {
    return this.imageCount() > 0;
  }

  /** Put a new user turn on screen; the answer comes with `attachAnswer`. */
  addExchange(text, images) {
    const exchange = { user: { text, images, element: renderUserTurn(text, images) }, answer: null, text: "", left: false };
    this.exchanges.push(exchange);
    this.emptyState.hidden = true;
    this.container.append(exchange.user.element);
    return exchange;
  }

  attachAnswer(exchange, view) {
    if (exchange.answer) exchange.answer.dispose();
    exchange.answer = view;
    exchange.text = "";
    exchange.user.element.after(view.root);
  }

  /** A failed exchange stays on screen but is left out of the history, so it cannot break later requests. */
  setLeftOut(exchange, leftOut) {
    exchange.left = leftOut;
    exchange.user.element.classList.toggle("left-out", leftOut);
    const note = exchange.user.element.querySelector(".turn-note");
    note.hidden = !leftOut;
    note.textContent = leftOut ? "Not answered — left out of the conversation. Retry to send it again." : "";
  }

  /**
   * The `messages` of a request: system prompt, then every kept exchange up to and including `upTo`.
   * @param {string} systemPrompt
   * @param {object} upTo  the exchange being answered
   */
  buildMessages(systemPrompt, upTo) {
    const messages = [];
    if (systemPrompt.trim()) messages.push({ role: "system", content: systemPrompt });
    for (const exchange of this.exchanges) {
      if (exchange.left && exchange !== upTo) continue;
      const content = exchange.user.images.map((image) => ({ type: "image_url", image_url: { url: image.dataUrl } }));
      if (exchange.user.text) content.push({ type: "text", text: exchange.user.text });
      messages.push({ role: "user", content });
      if (exchange === upTo) break;
      if (exchange.text) messages.push({ role: "assistant", content: exchange.text });
    }
    return messages;
  }

  /** The images a request for `upTo` sends, in order: what the server's box `image` index counts. */
  sentImages(upTo) {
    const images = [];
    for (const exchange of this.exchanges) {
      if (exchange.left && exchange !== upTo) continue;
      images.push(...exchange.user.images);
      if (exchange === upTo) break;
    }
    return images;
  }

  clear() {
    for (const exchange of this.exchanges) {
      if (exchange.answer) exchange.answer.dispose();
      exchange.user.element.remove();
    }
    this.exchanges = [];
    this.emptyState.hidden = false;
  }
}
