// The chat settings panel: kept in the browser, and turned into request fields.
// An empty box means "the server's default", so nothing is sent for it.

import { getSettings, saveSettings } from "./storage.js";

const FIELDS = ["system", "temperature", "top_p", "max_tokens", "thinking", "extra"];

export function bindSettings() {
  const saved = getSettings();
  for (const name of FIELDS) {
    const input = document.getElementById(name);
    if (saved[name] !== undefined) input.value = saved[name];
    input.addEventListener("change", () => {
      const now = getSettings();
      now[name] = input.value;
      saveSettings(now);
    });
  }
}

function number(id, integer) {
  const text = document.getElementById(id).value.trim();
  if (!text) return undefined;
  const n = Number(text);
  if (!Number.isFinite(n) || (integer && !Number.isInteger(n))) {
    throw new Error(`${document.querySelector(`label[for=${id}]`).textContent} must be ${integer ? "a whole number" : "a number"}`);
  }
  return n;
}

/** The system prompt, or "" for none. */
export function systemPrompt() {
  return document.getElementById("system").value.trim();
}

/** Request fields from the panel; throws an Error naming a bad field. */
export function requestFields() {
  const fields = {};
  const set = (name, value) => {
    if (value !== undefined) fields[name] = value;
  };
  set("temperature", number("temperature", false));
  set("top_p", number("top_p", false));
  set("max_tokens", number("max_tokens", true));
  // The server's reasoning budget: it closes the think block once spent.
  set("max_reasoning_tokens", number("thinking", true));
  const extra = document.getElementById("extra").value.trim();
  if (extra) {
    let parsed;
    try {
      parsed = JSON.parse(extra);
    } catch (e) {
      throw new Error(`Extra request fields are not JSON: ${e.message}`);
    }
    if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) {
      throw new Error("Extra request fields must be a JSON object");
    }
    Object.assign(fields, parsed);
  }
  return fields;
}
