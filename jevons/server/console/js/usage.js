// Spend from the ledger (GET /v1/usage, admin keys only): a table, and the
// same rows as a CSV download.

import { usage } from "./api.js";

const $ = (id) => document.getElementById(id);

function params() {
  const p = { group_by: $("usage-group").value };
  if ($("usage-since").value) p.since = $("usage-since").value;
  if ($("usage-until").value) p.until = $("usage-until").value;
  return p;
}

function renderTable(rows) {
  const table = $("usage-table");
  if (!rows.length) {
    table.replaceChildren();
    $("usage-message").textContent = "No requests in this window.";
    return;
  }
  const columns = Object.keys(rows[0]);
  const head = document.createElement("tr");
  for (const c of columns) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = c;
    head.append(th);
  }
  const body = rows.map((row) => {
    const tr = document.createElement("tr");
    for (const c of columns) {
      const td = document.createElement("td");
      const v = row[c];
      td.textContent = v === null || v === undefined ? "" : typeof v === "number" ? v.toLocaleString("en-US", { maximumFractionDigits: 6 }) : String(v);
      tr.append(td);
    }
    return tr;
  });
  table.replaceChildren(head, ...body);
  $("usage-message").textContent = `${rows.length} row${rows.length === 1 ? "" : "s"}.`;
}

function download(text, name) {
  const url = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export function bindUsage() {
  const fail = (e) => {
    $("usage-table").replaceChildren();
    $("usage-message").textContent = e.message;
  };
  $("usage-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("usage-message").textContent = "Loading…";
    try {
      renderTable((await usage(params())).data);
    } catch (err) {
      fail(err);
    }
  });
  $("usage-csv").addEventListener("click", async () => {
    try {
      download(await usage(params(), true), "jevons-usage.csv");
    } catch (err) {
      fail(err);
    }
  });
}
