// Small formatting and DOM helpers shared by the panels. Text goes in with textContent only:
// model names and log lines are data, never markup.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

export function clock(epochSeconds) {
  return new Date(epochSeconds * 1000).toLocaleTimeString([], { hour12: false });
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

export function ms(value) {
  return value === null || value === undefined ? "–" : `${Math.round(value)} ms`;
}

export function mib(value) {
  return `~${Math.round(value)} MiB`;
}

export function orDash(value) {
  return value === null || value === undefined || value === "" ? "–" : String(value);
}

// The configured context of an engine: its key is "model@ctx".
export function variantOf(key) {
  return Number(key.slice(key.lastIndexOf("@") + 1));
}

// A bar of `value` against `total`, with the numbers written out (readable without colour).
export function bar(value, total, label) {
  const share = total > 0 ? Math.min(1, value / total) : 0;
  const fill = el("span", { class: "bar-fill" });
  fill.style.width = `${(share * 100).toFixed(1)}%`;
  return el("div", { class: "bar", role: "img", "aria-label": label },
            fill, el("span", { class: "bar-text", text: label }));
}

export const SVG_NS = "http://www.w3.org/2000/svg";

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}
