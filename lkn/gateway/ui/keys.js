// The Keys panel: each client key (server.keys, /admin/keys) with its requests in lkn now, its
// cap and what its quotas leave, and from the activity log (/admin/usage) its requests, errors
// and tokens of the last 24 h. Shown only when lkn has client keys. Key ids are data: text only.
import { duration, el } from "./format.js";

export const DAY_S = 86400;
const QUOTAS = ["requests_per_minute", "tokens_per_minute", "tokens_per_day"];

// "used / limit (left)" of a limit that is set; a spent one says when it clears.
export function quotaText(q) {
  if (!q || q.limit === null || q.limit === undefined) return "–";
  const left = q.left > 0 || !q.reset_s ? `${q.left} left`
    : `none left, clears in ${duration(q.reset_s)}`;
  return `${q.used} / ${q.limit} (${left})`;
}

function dayText(usage, id, name) {
  if (!usage) return "–"; // the activity log could not be read
  const sums = usage.get(id);
  return String(sums && sums[name] !== null && sums[name] !== undefined ? sums[name] : 0);
}

function row(key, usage) {
  const quota = key.quota || {};
  const cells = [
    ["in-flight", `${key.in_flight} / ${key.waiting}`],
    ["max-concurrent", key.max_concurrent === null || key.max_concurrent === undefined
      ? "–" : String(key.max_concurrent)],
    ...QUOTAS.map((name) => [name, quotaText(quota[name])]),
    ["requests-24h", dayText(usage, key.id, "requests")],
    ["errors-24h", dayText(usage, key.id, "errors")],
    ["tokens-24h", dayText(usage, key.id, "total_tokens")],
  ];
  const spent = (name) => quota[name] && quota[name].limit !== null && quota[name].left === 0;
  const models = key.models && key.models.length ? key.models.join(", ") : "every model";
  return el("tr", { "data-key": key.id },
            el("th", { scope: "row", class: "id", title: `${key.priority || "interactive"}; `
                       + `models: ${models}`, text: key.id }),
            ...cells.map(([name, text]) => el("td", {
              "data-field": name, class: QUOTAS.includes(name) && spent(name) ? "spent" : null,
              text })));
}

// `keys`: /admin/keys's data; `usage`: /admin/usage?group_by=key's data, or null with
// `error` saying why the log could not be read.
export function renderKeys(nodes, keys, usage, error = "") {
  nodes.section.hidden = keys.length === 0;
  if (!keys.length) return;
  const byKey = usage ? new Map(usage.map((u) => [u.key, u])) : null;
  const waiting = keys.reduce((sum, k) => sum + (k.waiting || 0), 0);
  nodes.summary.textContent = `${keys.length} client keys, ${waiting} requests waiting for `
    + "their key's cap; the last 24 h "
    + (usage ? "from the activity log" : `unknown: ${error || "the activity log is off"}`);
  nodes.tbody.replaceChildren(...keys.map((k) => row(k, byKey)));
}
