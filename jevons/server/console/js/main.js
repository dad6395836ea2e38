// The console's entry point: wires the pages, the key dialog and the model list.

import { listModels } from "./api.js";
import { ChatView } from "./chat.js";
import { ConversationList } from "./conversations.js";
import { Dashboard } from "./dashboard.js";
import { bindSettings } from "./settings.js";
import { getKey, setKey } from "./storage.js";
import { bindUsage } from "./usage.js";

const $ = (id) => document.getElementById(id);

/** Show (or, with null, clear) the page's notice: a message, or an error with a hint for a key problem. */
function showAlert(message) {
  if (message instanceof Error) {
    message = message.status === 401 ? `${message.message} — set the API key (button at the top right).` : message.message;
  }
  const box = $("alert");
  box.textContent = message || "";
  box.hidden = !message;
}

function bindKeyDialog(onSaved) {
  const dialog = $("key-dialog");
  const input = $("key-input");
  $("key-button").addEventListener("click", () => {
    input.value = getKey();
    dialog.showModal();
  });
  dialog.addEventListener("close", () => {
    if (dialog.returnValue !== "save") return;
    setKey(input.value.trim());
    onSaved();
  });
}

async function loadModels() {
  const select = $("model");
  try {
    const names = await listModels();
    const keep = select.value;
    select.replaceChildren(...names.map((name) => new Option(name, name)));
    if (names.includes(keep)) select.value = keep;
    showAlert(null);
  } catch (e) {
    showAlert(e);
    if (e.status === 503) setTimeout(loadModels, 2000); // still loading the model: ask again
  }
}

function bindTabs(dashboard) {
  const pages = { chat: $("page-chat"), dashboard: $("page-dashboard") };
  const show = (name) => {
    for (const [key, page] of Object.entries(pages)) {
      page.hidden = key !== name;
      $(`tab-${key}`).setAttribute("aria-pressed", String(key === name));
    }
    if (name === "dashboard") dashboard.start();
    else dashboard.stop();
    const url = location.pathname + location.search + (name === "chat" ? "" : `#${name}`);
    history.replaceState(null, "", url); // a reload opens the same page
  };
  $("tab-chat").addEventListener("click", () => show("chat"));
  $("tab-dashboard").addEventListener("click", () => show("dashboard"));
  show(location.hash === "#dashboard" ? "dashboard" : "chat");
}

function main() {
  bindSettings();
  const conversations = new ConversationList((conv) => chat.show(conv));
  const chat = new ChatView({
    model: () => $("model").value,
    alert: showAlert,
    changed: () => conversations.render(),
  });
  conversations.start();
  const dashboard = new Dashboard(showAlert);
  bindTabs(dashboard);
  bindUsage();
  bindKeyDialog(loadModels);
  loadModels();
  document.body.dataset.ready = "true"; // for tests: every handler is bound
}

main();
