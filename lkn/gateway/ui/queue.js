// The queue panel: how many requests wait for an engine and how many engines answer, per model
// the requests lkn holds now, and each of them (with a button to cancel it).
import { duration, el } from "./format.js";

function perMinute(model) {
  const last = model.traffic && (model.traffic["60s"] || Object.values(model.traffic)[0]);
  return last ? String(last.per_minute) : "–";
}

export function renderQueue(nodes, status, cancel) {
  const inLkn = new Map();
  for (const r of status.requests) inLkn.set(r.model, (inLkn.get(r.model) || 0) + 1);
  nodes.summary.textContent = `${status.queued} queued for an engine, ${status.in_flight} `
    + `being answered by one; ${status.requests.length} requests in lkn`;
  nodes.models.replaceChildren(...Object.entries(status.models).map(([name, model]) =>
    el("tr", { "data-model": name },
       el("th", { scope: "row", text: name }),
       el("td", { text: model.state }),
       el("td", { "data-field": "requests", text: String(inLkn.get(name) || 0) }),
       el("td", { text: perMinute(model) }),
       el("td", { text: model.homeostasis
         ? `${model.homeostasis.mode} (threshold ${model.homeostasis.threshold})` : "–" }))));
  const rows = status.requests.map((r) => {
    const button = el("button", { type: "button", "aria-label": `cancel request ${r.id}`,
                                  text: "Cancel" });
    button.addEventListener("click", () => cancel(r.id));
    return el("tr", { "data-id": r.id },
              el("td", { class: "id", text: r.id }), el("td", { text: r.model || "–" }),
              el("td", { text: r.route }), el("td", { text: duration(r.running_s) }),
              el("td", {}, button));
  });
  nodes.inflight.replaceChildren(...(rows.length ? rows
    : [el("tr", {}, el("td", { colspan: 5, text: "none" }))]));
}
