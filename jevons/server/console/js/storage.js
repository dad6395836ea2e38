// What the console keeps in this browser (localStorage): the API key, the
// chat settings and the conversations. Nothing of it is sent anywhere but to
// this server, and only as part of a request.

const KEY = "jevons.key";
const SETTINGS = "jevons.settings";
const CONVERSATIONS = "jevons.conversations";
const CURRENT = "jevons.current";

function read(name, fallback) {
  try {
    const text = localStorage.getItem(name);
    return text === null ? fallback : JSON.parse(text);
  } catch {
    return fallback; // unreadable (hand-edited, or another version's): start afresh
  }
}

function write(name, value) {
  try {
    localStorage.setItem(name, JSON.stringify(value));
  } catch (e) {
    console.warn("could not save", name, e); // quota: the page still works, it just forgets
  }
}

export function getKey() {
  return localStorage.getItem(KEY) || "";
}

export function setKey(key) {
  if (key) localStorage.setItem(KEY, key);
  else localStorage.removeItem(KEY);
}

export function getSettings() {
  return read(SETTINGS, {});
}

export function saveSettings(settings) {
  write(SETTINGS, settings);
}

/** All conversations, newest first: [{id, title, created, model, messages: [...]}]. */
export function listConversations() {
  const all = read(CONVERSATIONS, []);
  return Array.isArray(all) ? all : [];
}

export function getConversation(id) {
  return listConversations().find((c) => c.id === id) || null;
}

export function saveConversation(conv) {
  const rest = listConversations().filter((c) => c.id !== conv.id);
  write(CONVERSATIONS, [conv, ...rest]);
}

export function deleteConversation(id) {
  write(CONVERSATIONS, listConversations().filter((c) => c.id !== id));
}

export function getCurrentId() {
  return localStorage.getItem(CURRENT);
}

export function setCurrentId(id) {
  if (id) localStorage.setItem(CURRENT, id);
  else localStorage.removeItem(CURRENT);
}

export function newConversation() {
  const id = (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random()).slice(0, 36);
  return { id, title: "New chat", created: Date.now(), messages: [] };
}
