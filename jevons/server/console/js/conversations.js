// The list of conversations kept in this browser: open one, start one, delete one.

import {
  deleteConversation, getConversation, getCurrentId, listConversations, newConversation, saveConversation,
  setCurrentId,
} from "./storage.js";

export class ConversationList {
  /** @param {(conv: object) => void} open  show a conversation in the chat */
  constructor(open) {
    this.open = open;
    this.list = document.getElementById("conversations");
    document.getElementById("new-chat").addEventListener("click", () => this.select(this.create()));
  }

  create() {
    const conv = newConversation();
    saveConversation(conv);
    return conv;
  }

  /** The conversation to show at start: the last one open, else a new one. */
  start() {
    const conv = getConversation(getCurrentId()) || listConversations()[0] || this.create();
    this.select(conv);
  }

  select(conv) {
    setCurrentId(conv.id);
    this.open(conv);
    this.render();
  }

  remove(id) {
    deleteConversation(id);
    if (getCurrentId() === id) this.start();
    else this.render();
  }

  render() {
    const current = getCurrentId();
    const items = listConversations().map((conv) => {
      const li = document.createElement("li");
      if (conv.id === current) li.setAttribute("aria-current", "true");
      const open = document.createElement("button");
      open.type = "button";
      open.className = "open";
      open.textContent = conv.title || "New chat";
      open.title = conv.title || "";
      open.addEventListener("click", () => this.select(getConversation(conv.id) || conv));
      const del = document.createElement("button");
      del.type = "button";
      del.className = "delete";
      del.textContent = "×";
      del.setAttribute("aria-label", `Delete conversation: ${conv.title || "New chat"}`);
      del.addEventListener("click", () => this.remove(conv.id));
      li.append(open, del);
      return li;
    });
    this.list.replaceChildren(...items);
  }
}
