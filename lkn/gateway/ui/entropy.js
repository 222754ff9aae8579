// An entropy histogram per model (the probe's normalized entropy is in [0, 1]) with the
// homeostat's threshold marked: bars at or above it are the ANALYTIC side, hatched.
import { el, svg } from "./format.js";

const BINS = 10;

export function histogram(values) {
  const counts = new Array(BINS).fill(0);
  for (const v of values) counts[Math.min(BINS - 1, Math.max(0, Math.floor(v * BINS)))] += 1;
  return counts;
}

function chart(model, counts, threshold, width) {
  const height = 120;
  const pad = { left: 4, right: 4, top: 14, bottom: 18 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const top = Math.max(1, ...counts);
  const x = (v) => pad.left + v * plotW;
  const node = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
                            "aria-label": `entropy histogram of ${model}` });
  counts.forEach((count, i) => {
    const h = (count / top) * plotH;
    const low = i / BINS;
    const side = threshold !== null && low >= threshold ? "analytic" : "fluid";
    const rect = svg("rect", { x: x(low) + 1, y: pad.top + plotH - h,
                               width: plotW / BINS - 2, height: h, class: `hist ${side}`,
                               "data-count": count });
    rect.append(svg("title", { text: `${low.toFixed(1)}–${(low + 1 / BINS).toFixed(1)}: `
                                     + `${count} requests` }));
    node.append(rect);
    if (count) {
      node.append(svg("text", { x: x(low + 0.5 / BINS), y: pad.top + plotH - h - 3,
                                "text-anchor": "middle", class: "count", text: count }));
    }
  });
  node.append(svg("line", { x1: pad.left, x2: width - pad.right, y1: pad.top + plotH + 0.5,
                            y2: pad.top + plotH + 0.5, class: "axis" }));
  for (const v of [0, 0.5, 1]) {
    node.append(svg("text", { x: x(v), y: height - 4, class: "tick",
                              "text-anchor": v === 0 ? "start" : v === 1 ? "end" : "middle",
                              text: String(v) }));
  }
  if (threshold !== null) {
    const line = svg("line", { x1: x(threshold), x2: x(threshold), y1: pad.top - 4,
                               y2: pad.top + plotH, class: "threshold" });
    node.append(line);
    node.append(svg("text", { x: x(threshold) + (threshold > 0.7 ? -3 : 3), y: pad.top - 4,
                              "text-anchor": threshold > 0.7 ? "end" : "start",
                              class: "threshold-label", text: `threshold ${threshold}` }));
  }
  return node;
}

export function renderEntropy(container, requests, models) {
  const width = Math.max(240, Math.min(520, (container.clientWidth || 520) - 2));
  const byModel = new Map();
  for (const r of requests) {
    if (typeof r.entropy !== "number") continue;
    if (!byModel.has(r.model)) byModel.set(r.model, []);
    byModel.get(r.model).push(r);
  }
  for (const [name, m] of Object.entries(models)) {
    if (m.homeostasis && m.homeostasis.mode === "homeostatic" && !byModel.has(name)) {
      byModel.set(name, []);
    }
  }
  const figures = [...byModel.keys()].sort().map((name) => {
    const list = byModel.get(name);
    const settings = models[name] && models[name].homeostasis;
    const threshold = settings ? settings.threshold : null;
    const analytic = list.filter((r) => r.mode === "ANALYTIC").length;
    const fluid = list.filter((r) => r.mode === "FLUID").length;
    const caption = `${name}: ${list.length} probed requests, ${fluid} FLUID, `
      + `${analytic} ANALYTIC` + (settings ? `; mode ${settings.mode}, threshold `
      + `${settings.threshold}, intervention ${settings.intervention}` : "");
    return el("figure", { "data-model": name },
              chart(name, histogram(list.map((r) => r.entropy)), threshold, width),
              el("figcaption", { text: caption }));
  });
  container.replaceChildren(...(figures.length ? figures
    : [el("p", { text: "No probed requests yet: no model is homeostatic, or none was asked." })]));
}
