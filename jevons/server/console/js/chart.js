// A small SVG line chart for the dashboard: a title, the latest value in
// large type, one line per series over the last `capacity` samples.

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2a62c9", "#d9822b", "#2e9d4d", "#a33ea1"];
const W = 300;
const H = 80;

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

export class LineChart {
  /**
   * @param {HTMLElement} parent
   * @param {{id: string, title: string, series: string[], format: (v: number) => string, capacity?: number}} opts
   */
  constructor(parent, { id, title, series, format, capacity = 60 }) {
    this.series = series;
    this.format = format;
    this.capacity = capacity;
    this.points = series.map(() => []);
    const box = document.createElement("figure");
    box.className = "chart";
    box.dataset.chart = id;
    const h = document.createElement("h3");
    h.textContent = title;
    this.now = document.createElement("div");
    this.now.className = "now";
    this.now.textContent = "–";
    this.svg = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
    this.svg.setAttribute("aria-label", title);
    this.lines = series.map((_, i) => {
      const line = svg("polyline", { fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 2,
        "vector-effect": "non-scaling-stroke" });
      this.svg.append(line);
      return line;
    });
    const legend = document.createElement("figcaption");
    legend.className = "legend";
    this.legend = legend;
    box.append(h, this.now, this.svg, legend);
    parent.append(box);
    this.box = box;
  }

  /** Add one sample per series (null: no value this time). */
  push(values) {
    values.forEach((v, i) => {
      const pts = this.points[i];
      pts.push(v);
      if (pts.length > this.capacity) pts.shift();
    });
    this.draw(values);
  }

  draw(latest) {
    const all = this.points.flat().filter((v) => v !== null && Number.isFinite(v));
    const max = Math.max(1e-9, ...all) * 1.1;
    // Left to right since the page opened (ten slots at least, so the first
    // points do not fill the width), then scrolling once `capacity` is reached.
    const span = Math.max(this.points[0].length, 10) - 1;
    this.lines.forEach((line, i) => {
      const pts = this.points[i];
      const coords = [];
      pts.forEach((v, k) => {
        if (v === null || !Number.isFinite(v)) return;
        const x = (W * k) / span;
        coords.push(`${x.toFixed(1)},${(H - (H * v) / max).toFixed(1)}`);
      });
      line.setAttribute("points", coords.join(" "));
    });
    const shown = latest.map((v) => (v === null || !Number.isFinite(v) ? "–" : this.format(v)));
    this.now.textContent = this.series.length === 1 ? shown[0] : shown.join(" / ");
    this.legend.textContent = this.series.map((name, i) => `${name}: ${shown[i]}`).join(" · ");
    const filled = all.length > 0;
    this.box.dataset.filled = String(filled); // for tests: the chart has data
  }
}
