// The dashboard: reads /status, /admin/keys and the keys' last 24 h from /admin/usage (polled)
// and /admin/events (a live SSE stream, with the recent past as history), and draws the panels.
// With server.admin_keys set, lkn answers 401 until the operator gives a key; the page then asks
// for one and keeps it in sessionStorage.
import { Api, AuthError } from "./api.js";
import { EnginesPanel } from "./engines.js";
import { renderEntropy } from "./entropy.js";
import { DAY_S, renderKeys } from "./keys.js";
import { LogsPanel } from "./logs.js";
import { renderQueue } from "./queue.js";
import { renderRequests } from "./requests.js";
import { renderTimeline } from "./timeline.js";

const HISTORY = 500; // events asked for when the stream (re)connects: all lkn keeps
const KEEP = 1000; // events of each kind the page keeps
const POLL_MS = 2000; // idle times, queue and in-flight counts are not events: poll them
const RETRY_MS = 2000;

const $ = (id) => document.getElementById(id);
const api = new Api();
const data = { status: null, keys: { keys: [], usage: null, error: "" }, requests: [],
               engineEvents: [], swaps: [] };
const busyModels = new Set(); // an operator's action on the model is under way
let session = null; // the AbortController of the running polls and streams
let renderTimer = null;
let refreshTimer = null;

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}

function connection(text) {
  $("connection").textContent = text;
}

function say(text) {
  const node = $("message");
  node.textContent = text;
  node.hidden = !text;
}

function keep(list, event) {
  list.push(event);
  if (list.length > KEEP) list.splice(0, list.length - KEEP);
}

// ------------------------------------------------------------------ drawing

function render() {
  renderTimer = null;
  const status = data.status;
  if (!status) return;
  engines.render(status, busyModels);
  renderQueue({ summary: $("queue-summary"), models: $("models-table").tBodies[0],
                inflight: $("inflight-table").tBodies[0] }, status, cancel);
  const now = Math.max(Date.now() / 1000, ...data.engineEvents.map((e) => e.time));
  renderTimeline($("timeline"), $("swaps"), data.engineEvents, data.swaps, status.engines, now);
  renderKeys({ section: $("keys-panel"), summary: $("keys-summary"),
               tbody: $("keys-table").tBodies[0] }, data.keys.keys, data.keys.usage,
             data.keys.error);
  renderRequests($("requests-table").tBodies[0], data.requests);
  renderEntropy($("entropy"), data.requests, status.models);
  logs.setEngines([...new Set(status.engines.map((e) => e.key))].sort());
}

// Many events arrive at once on (re)connect: draw once for all of them.
function schedule() {
  if (renderTimer === null) renderTimer = setTimeout(render, 30);
}

// ------------------------------------------------------------------ reading lkn

// The client keys and their last 24 h. Only a refused admin key is an error here: without
// keys (or an lkn that cannot say) the panel stays hidden, without the log it says so.
async function readKeys() {
  let keys;
  try {
    keys = (await api.get("/admin/keys")).data;
  } catch (err) {
    if (err instanceof AuthError) throw err;
    return { keys: [], usage: null, error: "" };
  }
  if (!keys.length) return { keys, usage: null, error: "" };
  // The 24 h sums scan the activity log on its one writer's thread: every USAGE_EVERY_MS at
  // most, whatever the page's refresh rate (a busy log must not wait behind dashboards).
  const now = Date.now();
  if (usageCache && now - usageCache.at < USAGE_EVERY_MS) {
    return { keys, usage: usageCache.usage, error: usageCache.error };
  }
  const since = Math.floor(now / 1000) - DAY_S;
  try {
    const usage = await api.get(`/admin/usage?group_by=key&since=${since}`);
    usageCache = { at: now, usage: usage.data, error: "" };
  } catch (err) {
    if (err instanceof AuthError) throw err;
    usageCache = { at: now, usage: null, error: err.message };
  }
  return { keys, usage: usageCache.usage, error: usageCache.error };
}
const USAGE_EVERY_MS = 30000;
let usageCache = null;

async function refresh() {
  [data.status, data.keys] = await Promise.all([api.get("/status"), readKeys()]);
  schedule();
}

function refreshSoon() {
  if (refreshTimer !== null) return;
  refreshTimer = setTimeout(() => {
    refreshTimer = null;
    refresh().catch(fail);
  }, 100);
}

function onEvent(event) {
  switch (event.type) {
    case "request":
      keep(data.requests, event);
      break;
    case "engine":
      keep(data.engineEvents, event);
      refreshSoon();
      break;
    case "swap":
      keep(data.swaps, event);
      break;
    case "reload":
      refreshSoon();
      break;
    case "dropped":
      say(`The page fell behind and missed ${event.count} events.`);
      refreshSoon();
      break;
    default:
      break;
  }
  schedule();
}

async function followEvents(signal) {
  while (!signal.aborted) {
    connection("connecting to the event stream…");
    try {
      await api.stream(`/admin/events?history=${HISTORY}`, onEvent, signal, () => {
        // The history replaces what the page had: nothing is counted twice after a reconnect.
        data.requests = [];
        data.engineEvents = [];
        data.swaps = [];
        connection("live");
      });
      connection("the event stream ended; reconnecting…");
    } catch (err) {
      if (err.name === "AbortError") return;
      if (err instanceof AuthError) return fail(err);
      connection(`the event stream failed (${err.message}); reconnecting…`);
    }
    await sleep(RETRY_MS, signal);
  }
}

async function poll(signal) {
  while (!signal.aborted) {
    await sleep(POLL_MS, signal);
    if (signal.aborted) return;
    try {
      await refresh();
    } catch (err) {
      if (err instanceof AuthError) return fail(err);
      connection(`lkn does not answer: ${err.message}`);
    }
  }
}

function stop() {
  if (session) session.abort();
  session = null;
  logs.stop();
}

async function start() {
  stop();
  const controller = new AbortController();
  session = controller;
  try {
    await refresh();
  } catch (err) {
    return fail(err);
  }
  $("key-form").hidden = true;
  $("panels").hidden = false;
  $("forget-key").hidden = !api.key;
  followEvents(controller.signal);
  poll(controller.signal);
}

function askForKey(text) {
  stop();
  $("panels").hidden = true;
  $("forget-key").hidden = true;
  $("key-message").textContent = text;
  $("key-form").hidden = false;
  connection("waiting for the admin key");
  $("key-input").focus();
}

function fail(err) {
  if (err instanceof AuthError) {
    const refused = Boolean(api.key);
    api.setKey("");
    askForKey(refused ? `lkn refused that key: ${err.message}` : err.message);
  } else if (err.name !== "AbortError") {
    say(err.message);
  }
}

// ------------------------------------------------------------------ acting

async function act(action, model, ctx) {
  busyModels.add(model);
  schedule();
  say(`${action} ${model}…`);
  const query = action === "load" ? `?ctx=${ctx}` : "";
  try {
    await api.post(`/admin/models/${encodeURIComponent(model)}/${action}${query}`);
    say(`${action} ${model}: done`);
  } catch (err) {
    if (err instanceof AuthError) return fail(err);
    say(`${action} ${model} failed: ${err.message}`);
  } finally {
    busyModels.delete(model);
  }
  return refresh().catch(fail);
}

async function cancel(id) {
  try {
    const answer = await api.post(`/admin/requests/${encodeURIComponent(id)}/cancel`);
    say(`cancelled ${answer.cancelled} request(s) with id ${id}`);
  } catch (err) {
    if (err instanceof AuthError) return fail(err);
    say(`cancel ${id} failed: ${err.message}`);
  }
  return refresh().catch(fail);
}

// ------------------------------------------------------------------ wiring

const engines = new EnginesPanel($("vram"), $("engines"), act);
const logs = new LogsPanel({ form: $("logs-form"), engine: $("logs-engine"),
                             lines: $("logs-lines"), follow: $("logs-follow"),
                             info: $("logs-info"), output: $("logs") }, api, fail);

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  api.setKey($("key-input").value.trim());
  $("key-input").value = "";
  start();
});
$("forget-key").addEventListener("click", () => {
  api.setKey("");
  askForKey("The key was forgotten.");
});
window.addEventListener("resize", schedule);

start();
