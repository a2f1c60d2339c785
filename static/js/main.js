/**
 * Loupe's chat page: reads the configuration the server put in the page and wires the parts together.
 */
import { configureApiKey, hasKey, keyRequired, requestKey } from "./api-key.js";
import { AttachmentTray } from "./attachments.js";
import { ExtractDialog } from "./extract.js";
import { ChatController } from "./chat.js";
import { Conversation } from "./conversation.js";
import { HealthMonitor, describeHealth } from "./health.js";
import { HistoryPanel } from "./history-panel.js";
import { KeyDialog, wireForgetKey } from "./key-dialog.js";
import { SettingsPanel } from "./settings.js";

function readConfig() {
  return JSON.parse(document.getElementById("loupe-config").textContent);
}

/** Say something to screen readers (the visible page already shows it). */
function makeAnnouncer(region) {
  let timer = 0;
  return (text) => {
    clearTimeout(timer);
    region.textContent = "";
    timer = setTimeout(() => { region.textContent = text; }, 50);
  };
}

function showHealth(status) {
  const badge = document.getElementById("model-status");
  const banner = document.getElementById("model-banner");
  const words = describeHealth(status);
  badge.dataset.state = status.state;
  document.getElementById("model-status-text").textContent = words.badge;
  badge.title = status.state === "ok" ? `${status.model} on ${status.device} (${status.dtype})` : words.badge;
  banner.dataset.state = status.state;
  banner.textContent = words.banner;
  banner.hidden = !words.banner;
  banner.setAttribute("role", status.state === "error" ? "alert" : "status");
}

function start() {
  const config = readConfig();
  const byId = (id) => document.getElementById(id);
  const announce = makeAnnouncer(byId("announcer"));
  const health = new HealthMonitor(config.urls.health);
  const conversation = new Conversation(byId("conversation"), byId("empty-state"));
  const settings = new SettingsPanel(byId("settings-dialog"), byId("open-settings"), config.limits);
  const keyDialog = new KeyDialog(byId("key-dialog"));
  configureApiKey({ required: config.apiKeyRequired, ask: (options) => keyDialog.ask(options) });
  wireForgetKey({
    section: byId("key-settings"), button: byId("forget-key"), help: byId("help-key"), opener: byId("open-settings"),
  });
  let chat = null;
  const history = config.urls.history ? new HistoryPanel(
    {
      dialog: byId("history-dialog"), opener: byId("open-history"), close: byId("close-history"),
      list: byId("history-list"), status: byId("history-status"), more: byId("history-more"),
    },
    { url: config.urls.history, onOpen: (turns) => chat.openConversation(turns), announce },
  ) : null;
  const tray = new AttachmentTray(
    {
      list: byId("attachments"), notice: byId("attach-notice"), fileInput: byId("file-input"),
      attachButton: byId("attach-button"), dropOverlay: byId("drop-overlay"),
    },
    {
      limits: config.limits,
      acceptedTypes: config.acceptedTypes,
      imagesInHistory: () => conversation.imageCount(),
      onChange: () => chat?.updateControls(),
      announce,
    },
  );
  chat = new ChatController({
    config,
    elements: {
      form: byId("composer"), prompt: byId("prompt"), send: byId("send"), stop: byId("stop"),
      newChat: byId("new-chat"), scroller: byId("main"), attachButton: byId("attach-button"),
      tasks: [...document.querySelectorAll("[data-task]")], extract: byId("extract-fields"),
    },
    conversation, tray, settings, health, announce,
    onAnswered: () => history?.refresh(),
  });
  new ExtractDialog(  // it lives on in its listeners
    { dialog: byId("extract-dialog"), opener: byId("extract-fields") },
    { onExtract: (prompt, responseFormat) => chat.sendFromComposer(prompt, responseFormat) },
  );
  health.subscribe(showHealth);
  health.start();
  document.documentElement.dataset.ready = "true";
  // Ask up front, so the first question is not refused: declining is fine, the next request asks again.
  if (keyRequired() && !hasKey()) requestKey(false);
}

start();
