// The log tail of one engine (`/admin/engines/{engine}/logs?lines=N`), and follow mode: the
// same route's SSE stream, read with fetch() so that the admin key can be sent.
import { el } from "./format.js";

const KEEP_LINES = 2000;

export class LogsPanel {
  constructor(nodes, api, onError) {
    this.nodes = nodes;
    this.api = api;
    this.onError = onError;
    this.following = null; // the AbortController of the open follow stream
    nodes.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.show();
    });
    nodes.follow.addEventListener("change", () => this.show());
    nodes.engine.addEventListener("change", () => this.show());
  }

  // Keep the engine choices in step with the engines lkn knows, keeping the selection.
  setEngines(keys) {
    const select = this.nodes.engine;
    const have = [...select.options].map((o) => o.value);
    if (have.length === keys.length && have.every((k, i) => k === keys[i])) return;
    const chosen = select.value;
    select.replaceChildren(...keys.map((k) => el("option", { value: k, text: k })));
    if (keys.includes(chosen)) select.value = chosen;
  }

  stop() {
    if (this.following) this.following.abort();
    this.following = null;
  }

  async show() {
    this.stop();
    const engine = this.nodes.engine.value;
    if (!engine) return;
    const lines = Math.max(0, Math.min(10000, Number(this.nodes.lines.value) || 0));
    const path = `/admin/engines/${encodeURIComponent(engine)}/logs?lines=${lines}`;
    const out = this.nodes.output;
    try {
      if (!this.nodes.follow.checked) {
        const body = await this.api.get(path);
        out.textContent = body.lines.join("\n");
        this.nodes.info.textContent = `${body.lines.length} lines of ${body.key} `
          + `(${body.engine}), file ${body.file || "none"}`;
        out.scrollTop = out.scrollHeight;
        return;
      }
      const controller = new AbortController();
      this.following = controller;
      out.textContent = "";
      this.nodes.info.textContent = `following ${engine}…`;
      let count = 0;
      await this.api.stream(`${path}&follow=1`, (event) => {
        count += 1;
        const atEnd = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
        // A follower that falls behind is told how many lines it missed, not sent them.
        const text = event.dropped ? `[… ${event.dropped} lines missed …]` : event.line;
        out.append(`${count > 1 ? "\n" : ""}${text}`);
        if (count > KEEP_LINES) {
          out.textContent = out.textContent.split("\n").slice(-KEEP_LINES).join("\n");
          count = KEEP_LINES;
        }
        if (atEnd) out.scrollTop = out.scrollHeight;
      }, controller.signal);
      if (this.following === controller) this.nodes.info.textContent = `${engine}: stream ended`;
    } catch (err) {
      if (err.name === "AbortError") return;
      this.nodes.info.textContent = `log of ${engine}: ${err.message}`;
      this.onError(err);
    }
  }
}
