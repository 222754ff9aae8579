// The swap timeline: which engine held memory when, drawn from the `engine` events (one row per
// engine variant, one bar per state that holds memory) with the `swap` events as dashed lines.
import { clock, el, svg } from "./format.js";

// States that hold (or are about to hold, or still hold) the engine's memory.
const HOLDING = new Set(["starting", "ready", "stopping", "asleep"]);
const MIN_SPAN_S = 60;

// Per engine key, the intervals [from, to, state] in which it held memory, between `start` and
// `now` (epoch seconds). An engine's state before its first event is that event's `previous`;
// an engine with no events has held its present state all along.
export function intervals(events, engines, start, now) {
  const byKey = new Map();
  for (const e of engines) byKey.set(e.key, []);
  for (const e of events) {
    if (!byKey.has(e.key)) byKey.set(e.key, []);
    byKey.get(e.key).push(e);
  }
  const current = new Map(engines.map((e) => [e.key, e.state]));
  const rows = [];
  for (const [key, list] of byKey) {
    list.sort((a, b) => a.time - b.time || a.seq - b.seq);
    const spans = [];
    let state = list.length ? list[0].previous : current.get(key);
    let from = start;
    for (const event of list) {
      if (HOLDING.has(state) && event.time > from) spans.push([from, event.time, state]);
      state = event.state;
      from = Math.max(start, event.time);
    }
    if (HOLDING.has(state)) spans.push([from, now, state]);
    rows.push({ key, spans });
  }
  return rows.sort((a, b) => a.key.localeCompare(b.key));
}

const FILLS = { ready: "seg-ready", starting: "seg-starting", stopping: "seg-stopping",
                asleep: "seg-asleep" };

export function renderTimeline(container, list, events, swaps, engines, nowS) {
  const first = Math.min(nowS - MIN_SPAN_S, ...events.map((e) => e.time),
                         ...swaps.map((s) => s.time));
  const start = first;
  const rows = intervals(events, engines, start, nowS);
  const width = Math.max(280, container.clientWidth || 600);
  const rowH = 34;
  const axis = 22;
  const height = rows.length * rowH + axis;
  const x = (t) => ((t - start) / Math.max(1, nowS - start)) * (width - 2) + 1;
  const chart = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
                             "aria-label": "engines holding memory over time" });
  rows.forEach((row, i) => {
    const y = i * rowH;
    const g = svg("g", { "data-key": row.key });
    g.append(svg("text", { x: 2, y: y + 12, class: "row-label", text: row.key }));
    g.append(svg("line", { x1: 0, x2: width, y1: y + 30.5, y2: y + 30.5, class: "row-rule" }));
    for (const [from, to, state] of row.spans) {
      const rect = svg("rect", { x: x(from), y: y + 16, width: Math.max(1, x(to) - x(from)),
                                 height: 12, class: `seg ${FILLS[state]}`,
                                 "data-state": state });
      rect.append(svg("title", { text: `${row.key} ${state} ${clock(from)}–${clock(to)}` }));
      g.append(rect);
    }
    chart.append(g);
  });
  for (const swap of swaps) {
    const line = svg("line", { x1: x(swap.time), x2: x(swap.time), y1: 0,
                               y2: height - axis, class: "swap-line" });
    line.append(svg("title", { text: `${clock(swap.time)} swap: ${swap.stopped_key} stopped `
                                     + `for ${swap.for_key}` }));
    chart.append(line);
  }
  const ticks = width < 420 ? 2 : 4;
  for (let i = 0; i <= ticks; i++) {
    const t = start + ((nowS - start) * i) / ticks;
    const anchor = i === 0 ? "start" : i === ticks ? "end" : "middle";
    chart.append(svg("text", { x: x(t), y: height - 6, "text-anchor": anchor, class: "tick",
                               text: i === ticks ? "now" : clock(t) }));
  }
  container.replaceChildren(chart);
  list.replaceChildren(...swaps.slice(-10).reverse().map((s) =>
    el("li", { text: `${clock(s.time)}: ${s.stopped_key} stopped to make room for `
                     + `${s.for_key}` })));
}
