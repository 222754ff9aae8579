// The last finished requests, newest first, from the `request` events.
import { clock, el, ms, orDash } from "./format.js";

export const SHOWN = 50;

function promptTokens(r) {
  if (r.prompt_tokens === null || r.prompt_tokens === undefined) return "–";
  return r.counted_by ? `${r.prompt_tokens} (${r.counted_by})` : String(r.prompt_tokens);
}

function intervention(r) {
  const parts = [r.intervention, r.escalated_from && `escalated from ${r.escalated_from}`,
                 r.cache && `cache ${r.cache}`].filter(Boolean);
  return parts.length ? parts.join("; ") : "–";
}

function status(r) {
  const word = r.status === 499 ? "client left" : r.status < 400 ? "ok" : "error";
  return `${r.status} ${word}`;
}

function row(r) {
  const cells = [
    ["time", clock(r.time)], ["model", r.model], ["variant", orDash(r.variant)],
    ["prompt", promptTokens(r)], ["mode", orDash(r.mode)],
    ["entropy", r.entropy === null || r.entropy === undefined ? "–" : r.entropy.toFixed(3)],
    ["intervention", intervention(r)], ["status", status(r)], ["latency", ms(r.latency_ms)],
    ["ttft", ms(r.ttft_ms)],
  ];
  return el("tr", { "data-id": r.id, class: r.status >= 400 ? "failed" : null, title: r.id },
            ...cells.map(([name, text]) => el("td", { "data-field": name, text })));
}

export function renderRequests(tbody, requests) {
  const last = requests.slice(-SHOWN).reverse();
  tbody.replaceChildren(...(last.length ? last.map(row)
    : [el("tr", {}, el("td", { colspan: 10, text: "no requests yet" }))]));
}
