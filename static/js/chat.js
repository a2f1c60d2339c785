/**
 * The chat controller: the message box and its buttons, sending a turn with its history,
 * following the stream, Stop, Regenerate / Retry, New chat, and opening a conversation from the history.
 */
import { ApiError, streamChat } from "./api.js";
import { conversationKey } from "./conversation.js";
import { AnswerView } from "./answer-view.js";
import { showFields } from "./extract.js";

export const TASK_PROMPTS = {
  describe: "Describe this image in detail.",
  ocr: "Extract all the text in this image, in reading order. Keep the layout where it matters "
    + "(use a Markdown table for tables). If there is no text, say so.",
  explain: "Explain this image: what it shows, what it means, and anything notable about it.",
};

/** Qwen3-VL's own grounding prompt: it answers with JSON boxes, which the server turns into `boxes`. */
export function findPrompt(what) {
  return `Locate every instance that belongs to the following categories: "${what}". `
    + "Report bbox coordinates in JSON format.";
}

const STICK_TO_BOTTOM_PX = 96;

export class ChatController {
  /**
   * @param {object} parts  {config, elements, conversation, tray, settings, health, announce,
   *                        onAnswered (optional: called when an answer has finished, stopped or failed)}
   */
  constructor({ config, elements, conversation, tray, settings, health, announce, onAnswered = () => {} }) {
    this.config = config;
    this.el = elements;
    this.conversation = conversation;
    this.tray = tray;
    this.settings = settings;
    this.health = health;
    this.announce = announce;
    this.onAnswered = onAnswered;
    this.current = null;
    this.waiting = false;  // a send is waiting for attached images to be prepared
    this.stickToBottom = true;
    this.coarsePointer = window.matchMedia("(pointer: coarse)");

    const { form, prompt, stop, newChat, scroller, tasks } = elements;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.sendFromComposer();
    });
    prompt.addEventListener("keydown", (event) => this.onPromptKey(event));
    prompt.addEventListener("input", () => {
      this.autosize();
      this.updateControls();
    });
    stop.addEventListener("click", () => this.stop());
    newChat.addEventListener("click", () => this.newChat());
    for (const button of tasks) {
      button.addEventListener("click", () => {
        if (button.dataset.task === "find") this.find();
        else this.sendFromComposer(TASK_PROMPTS[button.dataset.task]);
      });
    }
    scroller.addEventListener("scroll", () => {
      const gap = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight;
      this.stickToBottom = gap < STICK_TO_BOTTOM_PX;
    }, { passive: true });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.current && !document.querySelector("dialog[open]")) this.stop();
    });
    health.subscribe(() => this.updateControls());
    this.autosize();
    this.updateControls();
  }

  get generating() {
    return this.current !== null;
  }

  onPromptKey(event) {
    if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.keyCode === 229) return;
    if (this.coarsePointer.matches) return;  // on a touch keyboard Enter is a new line; the button sends
    event.preventDefault();
    if (!this.el.send.disabled && !this.generating) this.el.form.requestSubmit();
  }

  autosize() {
    const { prompt } = this.el;
    prompt.style.height = "auto";
    prompt.style.height = `${Math.min(prompt.scrollHeight + 2, Math.round(window.innerHeight * 0.35))}px`;
  }

  updateControls() {
    const { send, stop, prompt, tasks } = this.el;
    const ready = this.health.ready;
    const idle = !this.generating;
    const hasInput = prompt.value.trim() !== "" || this.tray.count > 0 || this.tray.busy;
    send.disabled = !idle || !ready || this.waiting || !hasInput;
    send.hidden = !idle;
    stop.hidden = idle;
    for (const button of tasks) button.disabled = !idle || !ready || this.waiting;
    if (this.el.extract) this.el.extract.disabled = !idle || !ready || this.waiting;
    const last = this.conversation.last;
    for (const exchange of this.conversation.exchanges) {
      exchange.answer?.setRegenerable(idle && ready && exchange === last);
    }
  }

  /**
   * Send what is in the message box (and the attached images); a task button adds its prompt, and
   * "Extract fields" a response format: the answer is JSON that follows its schema. Says whether it sent.
   */
  async sendFromComposer(taskPrompt = "", responseFormat = null) {
    if (this.generating || this.waiting || !this.health.ready) return false;
    if (this.tray.busy && !(await this.waitForImages())) return false;
    const typed = this.el.prompt.value.trim();
    if (taskPrompt && this.tray.count === 0 && !this.conversation.hasImages()) {
      this.tray.showProblems(["Attach an image first: the tasks are about an image."]);
      this.el.attachButton.focus();
      return false;
    }
    if (!typed && !taskPrompt && this.tray.count === 0) return false;
    let text = taskPrompt ? [taskPrompt, typed].filter(Boolean).join("\n\n") : typed;
    const images = this.tray.take();
    if (!text) text = TASK_PROMPTS.describe;
    this.el.prompt.value = "";
    this.autosize();
    const exchange = this.conversation.addExchange(text, images);
    exchange.responseFormat = responseFormat;  // kept for Regenerate
    this.stickToBottom = true;
    this.run(exchange);
    return true;
  }

  /** "Find": what is typed in the message box is what to find; the answer's boxes are drawn on the image. */
  find() {
    const what = this.el.prompt.value.trim().replace(/\s+/g, " ");
    if (!what) {
      this.tray.showProblems(["Type what to find (for example: cars, faces, the price), then press Find."]);
      this.el.prompt.focus();
      return;
    }
    this.el.prompt.value = "";
    this.sendFromComposer(findPrompt(what)).then((sent) => {
      if (!sent && !this.el.prompt.value) this.el.prompt.value = what;  // not sent: leave the words to try again
    });
  }

  /**
   * Wait while attached images are still being prepared (the tray shows them as "Preparing…").
   * @returns {Promise<boolean>} whether to send: not when an image was refused meanwhile (the notice says why)
   */
  async waitForImages() {
    const expected = this.tray.count + this.tray.pending;
    this.waiting = true;
    this.updateControls();
    this.announce("Preparing the images before sending…");
    try {
      await this.tray.ready();
    } finally {
      this.waiting = false;
      this.updateControls();
    }
    return this.tray.count >= expected;
  }

  /** Ask for (or again for) the answer of an exchange, streaming it into a new answer view. */
  async run(exchange) {
    const imagesInTurn = this.conversation.hasImages();
    const view = new AnswerView({
      hasImages: imagesInTurn,
      announce: this.announce,
      onChange: () => this.followStream(),
      onRegenerate: () => this.regenerate(),
      onRetry: () => this.regenerate(),
    });
    this.conversation.setLeftOut(exchange, false);
    this.conversation.attachAnswer(exchange, view);
    const abort = new AbortController();
    this.current = { exchange, view, abort };
    this.updateControls();
    this.followStream(true);

    const body = {
      messages: this.conversation.buildMessages(this.settings.systemPrompt, exchange),
      ...this.settings.requestFields(),
    };
    if (exchange.responseFormat) {
      // The JSON ends when it is complete; room up to the server's ceiling, which no answer is cut below.
      body.response_format = exchange.responseFormat;
      body.max_tokens = this.config.limits.maxNewTokensLimit;
    }
    let reason = null;
    let timings = null;
    let usage = null;
    let boxes = [];
    try {
      const options = { conversation: conversationKey(body.messages), resumeSeconds: this.config.streamResumeSeconds };
      for await (const event of streamChat(this.config.urls.chat, body, abort.signal, options)) {
        if (event.kind === "started") view.setPhase("reading");
        else if (event.kind === "text") {
          exchange.text += event.text;
          view.append(event.text);
        } else if (event.kind === "finish") {
          reason = event.reason;
          timings = event.timings;
          boxes = event.boxes;
        } else if (event.kind === "usage") usage = event.usage;
      }
      view.finish(reason, timings, usage);
      // The server gives boxes in the pixels of one image of the request, by its index among them.
      view.showBoxes(boxes, this.conversation.sentImages(exchange)[boxes[0]?.image]);
      if (exchange.responseFormat && reason === "stop") showFields(view.answer, exchange.text);
    } catch (error) {
      if (abort.signal.aborted) {
        view.stopped();
      } else {
        const message = error instanceof ApiError ? error.message : `Something went wrong in the page: ${error}`;
        view.failed(message);
        if (!exchange.text) this.conversation.setLeftOut(exchange, true);
        if (error instanceof ApiError && (error.status === 503 || error.status === 0)) this.health.refresh();
      }
    } finally {
      this.current = null;
      const focusWasOnStop = document.activeElement === this.el.stop || document.activeElement === document.body;
      this.updateControls();
      this.followStream();
      if (focusWasOnStop) this.el.prompt.focus();
      this.onAnswered();
    }
  }

  followStream(force = false) {
    const { scroller } = this.el;
    if (force || this.stickToBottom) scroller.scrollTop = scroller.scrollHeight;
  }

  stop() {
    if (this.current) this.current.abort.abort();
  }

  regenerate() {
    const last = this.conversation.last;
    if (!last || this.generating || !this.health.ready) return;
    this.stickToBottom = true;
    this.run(last);
  }

  /**
   * Show a conversation from the history in place of this one, ready to be continued.
   * @param {{text: string, images: object[], answer: {text: string, status: string, reason: string|null,
   *          error: object|null, timings: object|null, usage: object|null, boxes: object[]}}[]} turns
   */
  openConversation(turns) {
    this.stop();
    this.conversation.clear();
    this.tray.clear();
    for (const turn of turns) {
      const exchange = this.conversation.addExchange(turn.text, turn.images);
      const view = new AnswerView({
        hasImages: turn.images.length > 0,
        announce: () => {},  // the panel says once that the conversation is open
        onChange: () => {},
        onRegenerate: () => this.regenerate(),
        onRetry: () => this.regenerate(),
      });
      this.conversation.attachAnswer(exchange, view);
      const { answer } = turn;
      view.text = answer.text;
      exchange.text = answer.text;
      if (answer.status === "failed") {
        view.failed(answer.error?.message || "This request failed.");
        if (!answer.text) this.conversation.setLeftOut(exchange, true);
      } else if (answer.status === "cancelled") {
        view.stopped();
      } else {
        view.finish(answer.reason, answer.timings, answer.usage);
        exchange.responseFormat = turn.responseFormat || null;  // Regenerate asks for the same JSON
        if (exchange.responseFormat && answer.reason === "stop") showFields(view.answer, answer.text);
      }
      const boxes = answer.boxes || [];
      view.showBoxes(boxes, turns.flatMap((t) => t.images)[boxes[0]?.image]);
    }
    this.updateControls();
    this.followStream(true);
    this.el.prompt.focus();
  }

  newChat() {
    this.stop();
    this.conversation.clear();
    this.tray.clear();
    this.el.prompt.value = "";
    this.autosize();
    this.updateControls();
    this.el.prompt.focus();
    this.announce("New chat started.");
  }
}
