// The chat: one conversation on screen, sending, streaming, stop, regenerate,
// edit and resend. Conversations live in localStorage (storage.js); the list
// of them is conversations.js.

import { streamChat } from "./api.js";
import { editMessage, renderMessage } from "./message_view.js";
import { requestFields, systemPrompt } from "./settings.js";
import { AnswerClock, answerStats } from "./stats.js";
import { saveConversation } from "./storage.js";

/** Whether a request asks for JSON output (JSON mode, a schema, or vLLM's structured outputs). */
function asksForJson(body) {
  const type = body.response_format?.type;
  return type === "json_object" || type === "json_schema" || Boolean(body.structured_outputs?.json) ||
    body.guided_json !== undefined;
}

/** Merge streamed tool-call deltas (OpenAI's shape: fragments keyed by index) into msg.toolCalls. */
function addToolCalls(msg, deltas) {
  msg.toolCalls ??= [];
  for (const d of deltas) {
    const call = (msg.toolCalls[d.index ?? 0] ??= { id: "", name: "", arguments: "" });
    if (d.id) call.id = d.id;
    if (d.function?.name) call.name += d.function.name;
    if (d.function?.arguments) call.arguments += d.function.arguments;
  }
}

export class ChatView {
  /**
   * @param {object} opts
   * @param {() => string} opts.model        the model to ask
   * @param {(msg: string|Error|null) => void} opts.alert  show (or clear) a page-level notice
   * @param {() => void} opts.changed        a conversation was saved (the list redraws)
   */
  constructor({ model, alert, changed }) {
    this.model = model;
    this.alert = alert;
    this.changed = changed;
    this.list = document.getElementById("messages");
    this.prompt = document.getElementById("prompt");
    this.sendButton = document.getElementById("send");
    this.stopButton = document.getElementById("stop");
    this.conv = null;
    this.controller = null; // the AbortController of the answer being streamed
    document.getElementById("composer").addEventListener("submit", (e) => {
      e.preventDefault();
      this.send();
    });
    this.prompt.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.send();
      }
    });
    this.stopButton.addEventListener("click", () => this.stop());
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && this.busy && !document.querySelector("dialog[open]")) this.stop();
    });
  }

  get busy() {
    return this.controller !== null;
  }

  show(conv) {
    this.stop();
    this.conv = conv;
    this.render();
  }

  render() {
    const msgs = this.conv ? this.conv.messages : [];
    const lastAssistant = msgs.map((m) => m.role).lastIndexOf("assistant");
    this.list.replaceChildren(...msgs.map((msg, i) => renderMessage(msg, {
      actions: this.busy ? null : {
        edit: msg.role === "user" ? () => this.edit(i) : null,
        regenerate: i === lastAssistant ? () => this.regenerate() : null,
        copy: () => navigator.clipboard?.writeText(msg.content || ""),
      },
    })));
    this.list.scrollTop = this.list.scrollHeight;
  }

  setBusy(busy) {
    this.sendButton.hidden = busy;
    this.stopButton.hidden = !busy;
  }

  send() {
    const text = this.prompt.value.trim();
    if (!text || this.busy) return;
    this.prompt.value = "";
    this.conv.messages.push({ role: "user", content: text });
    if (this.conv.title === "New chat") this.conv.title = text.slice(0, 60);
    this.generate();
  }

  stop() {
    if (this.controller) this.controller.abort();
  }

  regenerate() {
    if (this.busy) return;
    const msgs = this.conv.messages;
    while (msgs.length && msgs[msgs.length - 1].role === "assistant") msgs.pop();
    this.generate();
  }

  async edit(index) {
    if (this.busy) return;
    const li = this.list.children[index];
    const text = await editMessage(li, this.conv.messages[index].content);
    if (text === null || !text.trim()) {
      this.render();
      return;
    }
    this.conv.messages.splice(index); // this message and everything after it
    this.conv.messages.push({ role: "user", content: text.trim() });
    this.generate();
  }

  /** The request's messages: the system prompt, then the conversation's text (no stats). */
  requestMessages() {
    const out = [];
    const system = systemPrompt();
    if (system) out.push({ role: "system", content: system });
    for (const m of this.conv.messages) {
      if (m.role === "assistant" && !m.content) continue; // a failed or empty answer teaches nothing
      out.push({ role: m.role, content: m.content });
    }
    return out;
  }

  async generate() {
    let fields;
    try {
      fields = requestFields();
    } catch (e) {
      this.alert(e.message);
      this.render();
      return;
    }
    this.alert(null);
    const body = { ...fields, model: this.model() || undefined, messages: this.requestMessages() };
    const conv = this.conv; // the user may open another conversation meanwhile
    saveConversation(conv); // the question is kept even if the page goes away mid-answer
    this.changed();
    const msg = { role: "assistant", content: "", reasoning: "", reasoningChunks: 0 };
    if (asksForJson(body)) msg.format = "json"; // shown as JSON, pretty-printed once complete
    conv.messages.push(msg);
    this.controller = new AbortController();
    this.setBusy(true);
    this.render();
    const li = this.list.lastElementChild;
    const clock = new AnswerClock();
    let usage = null;
    let pending = false;
    let view = li;
    const redraw = () => {
      pending = false;
      const next = renderMessage(msg, { streaming: true });
      const thinking = view.querySelector("details.thinking");
      const nextThinking = next.querySelector("details.thinking");
      if (thinking && nextThinking && msg.content) nextThinking.open = thinking.open; // keep the user's choice
      view.replaceWith(next);
      view = next;
      this.list.scrollTop = this.list.scrollHeight;
    };
    try {
      for await (const chunk of streamChat(body, this.controller.signal)) {
        if (chunk.usage) usage = chunk.usage;
        const delta = chunk.choices?.[0]?.delta;
        if (!delta) continue;
        if (delta.reasoning_content) {
          msg.reasoning += delta.reasoning_content;
          msg.reasoningChunks++;
          clock.token();
        }
        if (delta.content) {
          msg.content += delta.content;
          clock.token();
        }
        if (delta.tool_calls) addToolCalls(msg, delta.tool_calls);
        if (chunk.choices[0].finish_reason) msg.finish = chunk.choices[0].finish_reason;
        if (!pending) {
          pending = true;
          requestAnimationFrame(redraw); // one redraw per frame however fast tokens come
        }
      }
    } catch (e) {
      if (e.name !== "AbortError") {
        msg.error = e.message;
        this.alert(e);
      }
    }
    const stopped = this.controller.signal.aborted;
    this.controller = null;
    msg.stats = answerStats(usage, clock);
    if (stopped) msg.stats.stopped = true;
    else if (msg.finish && msg.finish !== "stop") msg.stats.finish = msg.finish;
    delete msg.finish;
    delete msg.reasoningChunks;
    if (!msg.reasoning) delete msg.reasoning;
    this.setBusy(false);
    saveConversation(conv);
    this.changed();
    if (this.conv === conv) this.render();
    this.prompt.focus();
  }
}
