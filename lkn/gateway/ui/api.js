// lkn's admin API and /status, with the operator's key (kept in this tab's sessionStorage
// only, never in localStorage or a cookie).
import { SseParser } from "./sse.js";

const KEY_NAME = "lkn-admin-key";

export class AuthError extends Error {}

async function errorMessage(resp) {
  try {
    const body = await resp.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) {
    // not lkn's JSON error body: say what HTTP said
  }
  return `${resp.status} ${resp.statusText}`;
}

export class Api {
  constructor() {
    this.key = sessionStorage.getItem(KEY_NAME) || "";
  }

  setKey(key) {
    this.key = key;
    if (key) sessionStorage.setItem(KEY_NAME, key);
    else sessionStorage.removeItem(KEY_NAME);
  }

  async request(method, path, signal) {
    const headers = this.key ? { Authorization: `Bearer ${this.key}` } : {};
    const resp = await fetch(path, { method, headers, signal, cache: "no-store" });
    if (resp.status === 401) throw new AuthError(await errorMessage(resp));
    if (!resp.ok) throw new Error(await errorMessage(resp));
    return resp;
  }

  async get(path) {
    return (await this.request("GET", path)).json();
  }

  async post(path) {
    return (await this.request("POST", path)).json();
  }

  // Read an SSE stream of JSON events until it ends or `signal` aborts it; `onOpen` is called
  // once lkn has answered.
  async stream(path, onEvent, signal, onOpen = () => {}) {
    const resp = await this.request("GET", path, signal);
    onOpen();
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    const parser = new SseParser();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      for (const data of parser.feed(value)) onEvent(JSON.parse(data));
    }
  }
}
