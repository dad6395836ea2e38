// One message on screen: who, the thinking (collapsible, with its token
// count), the answer as Markdown, the stats line, and the actions.

import { renderMarkdown } from "./markdown.js";
import { statsElement } from "./stats.js";

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function button(label, onClick, title) {
  const b = el("button", null, label);
  b.type = "button";
  if (title) b.setAttribute("aria-label", title);
  b.addEventListener("click", onClick);
  return b;
}

/** JSON output as a code block, pretty-printed when it parses (it does not while it streams). */
function jsonBlock(text) {
  let shown = text;
  try {
    shown = JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    // partial or invalid: as it came
  }
  const pre = el("pre", "json");
  pre.append(el("code", "language-json", shown));
  return pre;
}

function toolCall(call) {
  const box = el("div", "tool-call");
  const head = el("div", "tool-head", "Tool call ");
  head.append(el("code", null, call.name || "?"));
  box.append(head, jsonBlock(call.arguments));
  return box;
}

function thinkingLabel(msg, streaming) {
  const n = msg.stats?.reasoning_tokens ?? msg.reasoningChunks ?? 0;
  const what = streaming ? "Thinking…" : "Thought";
  return `${what} · ${n} token${n === 1 ? "" : "s"}`;
}

/**
 * Render `msg` ({role, content, reasoning?, stats?, error?}) as a list item.
 * `actions`: {edit, regenerate} callbacks, or null while it streams.
 */
export function renderMessage(msg, { streaming = false, actions = null } = {}) {
  const li = el("li", `msg ${msg.role}`);
  if (streaming) li.setAttribute("aria-busy", "true"); // screen readers wait for the whole answer
  li.append(el("div", "who", msg.role === "user" ? "You" : "Assistant"));
  if (msg.reasoning) {
    const details = el("details", "thinking");
    details.open = streaming && !msg.content; // open while thinking (the stream keeps the user's choice), folded when done
    const summary = el("summary", null, thinkingLabel(msg, streaming));
    details.append(summary, el("div", "text", msg.reasoning));
    li.append(details);
  }
  const body = el("div", "body");
  if (msg.role === "user") body.append(el("div", "plain", msg.content));
  else if (msg.format === "json") body.append(jsonBlock(msg.content || ""));
  else body.append(renderMarkdown(msg.content || ""));
  li.append(body);
  for (const call of msg.toolCalls || []) li.append(toolCall(call));
  if (msg.error) li.append(el("div", "error", msg.error));
  if (msg.stats) li.append(statsElement(msg.stats));
  if (actions) {
    const bar = el("div", "actions");
    if (msg.role === "user" && actions.edit) bar.append(button("Edit", actions.edit, "Edit and resend"));
    if (msg.role === "assistant" && actions.regenerate) {
      bar.append(button("Regenerate", actions.regenerate, "Regenerate this answer"));
    }
    if (actions.copy) bar.append(button("Copy", actions.copy, "Copy the text"));
    if (bar.childNodes.length) li.append(bar);
  }
  return li;
}

/** An edit box in place of a user message: resolves to the new text, or null if cancelled. */
export function editMessage(li, text) {
  return new Promise((resolve) => {
    const form = el("form", "edit");
    const label = el("label", "sr-only", "Edit message");
    const area = el("textarea");
    area.id = `edit-${Date.now()}`;
    label.htmlFor = area.id;
    area.value = text;
    area.rows = Math.min(12, text.split("\n").length + 1);
    const save = el("button", null, "Send");
    save.type = "submit";
    const cancel = button("Cancel", () => resolve(null));
    const row = el("div", "row");
    row.append(save, cancel);
    form.append(label, area, row);
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      resolve(area.value);
    });
    area.addEventListener("keydown", (e) => {
      if (e.key === "Escape") resolve(null);
    });
    li.replaceChildren(form);
    area.focus();
  });
}
