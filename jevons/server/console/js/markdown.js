// A small Markdown renderer that builds DOM nodes: model text only ever
// becomes text nodes (textContent), never HTML, so nothing a model writes can
// run as script. Covers what chat answers use: fenced code, headings, lists,
// block quotes, rules, paragraphs, `code`, **bold**, *italic*, links.

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const SAFE_URL = /^(https?:|mailto:)/i;
// One inline token at a time: code span, bold, italic, link.
const INLINE = /(`+)([\s\S]*?[^`])\1(?!`)|\*\*([^*]+)\*\*|__([^_]+)__|\*([^*\s][^*]*)\*|(?<![A-Za-z0-9])_([^_\s][^_]*)_(?![A-Za-z0-9])|\[([^\]]+)\]\(([^)\s]+)\)/;

/** Append `text` with inline markup to `parent`. */
export function renderInline(parent, text) {
  let rest = text;
  while (rest) {
    const m = INLINE.exec(rest);
    if (!m) {
      parent.append(rest);
      return;
    }
    if (m.index > 0) parent.append(rest.slice(0, m.index));
    if (m[1]) parent.append(el("code", null, m[2].trim() || m[2]));
    else if (m[3] || m[4]) renderInline(parent.appendChild(el("strong")), m[3] || m[4]);
    else if (m[5] || m[6]) renderInline(parent.appendChild(el("em")), m[5] || m[6]);
    else if (m[7]) {
      if (SAFE_URL.test(m[8])) {
        const a = el("a");
        a.href = m[8];
        a.rel = "noopener noreferrer nofollow";
        a.target = "_blank";
        renderInline(a, m[7]);
        parent.append(a);
      } else {
        parent.append(m[0]); // javascript: and the like stay text
      }
    }
    rest = rest.slice(m.index + m[0].length);
  }
}

const FENCE = /^\s{0,3}(```|~~~)\s*([\w+#.-]*)/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const BULLET = /^\s{0,3}[-*+]\s+(.*)$/;
const NUMBERED = /^\s{0,3}(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;

function isBlockStart(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || BULLET.test(line) ||
    NUMBERED.test(line) || QUOTE.test(line);
}

/** Render Markdown `text` into a fresh DocumentFragment. */
export function renderMarkdown(text) {
  const out = document.createDocumentFragment();
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if (!line.trim()) {
      i++;
    } else if ((m = FENCE.exec(line))) {
      const code = [];
      i++;
      while (i < lines.length && !lines[i].trimStart().startsWith(m[1])) code.push(lines[i++]);
      i++; // the closing fence (or the end of a block still being streamed)
      const pre = el("pre");
      const c = el("code", m[2] ? `language-${m[2]}` : null, code.join("\n"));
      pre.append(c);
      out.append(pre);
    } else if ((m = HEADING.exec(line))) {
      const h = el(`h${Math.min(6, m[1].length + 2)}`); // h3..h6: the page has its own h1/h2
      renderInline(h, m[2]);
      out.append(h);
      i++;
    } else if (RULE.test(line)) {
      out.append(el("hr"));
      i++;
    } else if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) {
        inner.push(m[1]);
        i++;
      }
      const q = el("blockquote");
      q.append(renderMarkdown(inner.join("\n")));
      out.append(q);
    } else if (BULLET.test(line) || NUMBERED.test(line)) {
      const ordered = !BULLET.test(line);
      const pattern = ordered ? NUMBERED : BULLET;
      const list = el(ordered ? "ol" : "ul");
      if (ordered) list.start = Number(NUMBERED.exec(line)[1]);
      while (i < lines.length && (m = pattern.exec(lines[i]))) {
        const item = [ordered ? m[2] : m[1]];
        i++;
        // Indented continuation lines belong to the item.
        while (i < lines.length && /^\s{2,}\S/.test(lines[i]) && !pattern.test(lines[i])) item.push(lines[i++].trim());
        const li = el("li");
        renderInline(li, item.join(" "));
        list.append(li);
      }
      out.append(list);
    } else {
      const para = [];
      while (i < lines.length && lines[i].trim() && !isBlockStart(lines[i])) para.push(lines[i++]);
      if (!para.length) para.push(lines[i++]); // a line no rule above took
      const p = el("p");
      para.forEach((text, k) => {
        if (k) p.append(el("br"));
        renderInline(p, text);
      });
      out.append(p);
    }
  }
  return out;
}
