// The server's public API, as any client sees it: every call carries the
// user's key, every failure becomes an ApiError with the server's own message.
// URLs are relative, so the console works wherever the server is mounted.

import { getKey } from "./storage.js";

export class ApiError extends Error {
  constructor(message, status = 0, code = null, param = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

function headers(extra = {}) {
  const h = { ...extra };
  const key = getKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

/** The error a non-2xx response carries (OpenAI's {"error": {...}} shape), or a generic one. */
async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON (a proxy's page): fall through to the status line
  }
  const e = body && body.error;
  if (e && e.message) return new ApiError(e.message, response.status, e.code, e.param);
  return new ApiError(`${response.status} ${response.statusText || "error"}`, response.status);
}

async function call(path, { method = "GET", body, signal, accept = "application/json" } = {}) {
  let response;
  try {
    response = await fetch(path, {
      method,
      signal,
      headers: headers(body === undefined ? { Accept: accept } : { Accept: accept, "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(`cannot reach the server: ${e.message}`);
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

export async function listModels() {
  const r = await call("v1/models");
  return (await r.json()).data.map((m) => m.id);
}

export async function metricsSnapshot(signal) {
  return (await call("metrics.json", { signal })).json();
}

/** GET /v1/usage as JSON rows, or the CSV text when csv is true. */
export async function usage(params, csv = false) {
  const q = new URLSearchParams({ ...params, format: csv ? "csv" : "json" });
  const r = await call(`v1/usage?${q}`, { accept: csv ? "text/csv" : "application/json" });
  return csv ? r.text() : r.json();
}

/**
 * POST /v1/chat/completions with stream=true: yields each chunk object as it
 * arrives. Aborting `signal` closes the connection, and the server then aborts
 * the request within one engine step.
 */
export async function* streamChat(body, signal) {
  const r = await call("v1/chat/completions", {
    method: "POST",
    signal,
    accept: "text/event-stream",
    body: { ...body, stream: true, stream_options: { include_usage: true } },
  });
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (!data) continue; // a keep-alive comment
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      // A failure after the 200 went out arrives as an error event in the stream.
      if (chunk.error) throw new ApiError(chunk.error.message, 500, chunk.error.code, chunk.error.param);
      yield chunk;
    }
  }
}
